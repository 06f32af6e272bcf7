"""What hardening writes to a host, rendered from settings (no host needed)."""

import re
import subprocess

from rave import hardening as h
from rave.components import monitoring_ports, public_ports
from rave.render import FILES
from tests.tools import cannot_run_here, require_tool
from tests.unit.conftest import make_settings


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            found.setdefault(key.lower(), []).append(value.strip())
    return found


def test_sshd_config_is_the_hardened_baseline():
    config = make_settings()
    directives = _directives(h.sshd_config_text(config))
    single = {key: values[0] for key, values in directives.items()}
    assert all(len(values) == 1 for values in directives.values()), "a directive repeated"
    assert "include" not in directives, "nothing may be included (it could weaken the config)"
    assert single["hostkey"] == "/etc/ssh/ssh_host_ed25519_key"
    assert single["hostkeyalgorithms"] == "ssh-ed25519"
    assert single["kexalgorithms"].split(",") == config.sshd_kex_algorithms
    assert single["ciphers"].split(",") == config.sshd_ciphers
    assert single["macs"].split(",") == config.sshd_macs
    assert single["passwordauthentication"] == "no"
    assert single["kbdinteractiveauthentication"] == "no"
    assert single["authenticationmethods"] == "publickey"
    assert single["permitrootlogin"] == "no"
    assert single["allowgroups"] == "rave-ssh"
    assert single["disableforwarding"] == "yes"
    assert single["x11forwarding"] == "no"
    assert single["loglevel"] == "VERBOSE"
    assert single["maxauthtries"] == "3"
    assert single["logingracetime"] == "30"
    assert single["maxstartups"] == "10:30:60"
    assert single["port"] == str(h.ssh_port()) == "22"
    assert single["subsystem"].startswith("sftp internal-sftp"), "pyinfra uploads over sftp"


def test_bootstrap_root_login_is_an_explicit_setting():
    config = make_settings(sshd_permit_root_login="prohibit-password")
    assert "PermitRootLogin prohibit-password\n" in h.sshd_config_text(config)


def _input_rules(text: str) -> list[str]:
    chain = text.split("chain input {", 1)[1].split("}\n\n\tchain forward", 1)[0]
    return [line.strip() for line in chain.splitlines() if line.strip() and "#" not in line]


def test_firewall_opens_exactly_the_public_ports_of_components():
    config = make_settings()
    text = h.nftables_text(config)
    rules = _input_rules(text)
    assert "type filter hook input priority filter; policy drop;" in rules
    assert 'iif "lo" accept' in rules
    assert "ct state established,related accept" in rules
    opened = set()
    for rule in rules:
        if rule.endswith("accept") and "saddr" not in rule and "tcp dport" in rule:
            match = re.search(r"tcp dport (\{ [^}]+ \}|\d+)", rule)
            assert match
            opened |= {int(p) for p in re.findall(r"\d+", match.group(1))}
    assert opened == set(public_ports()) == {22, 3002}
    assert not any("9100" in rule for rule in rules), "monitoring ports closed without sources"
    # fail2ban's table must survive a reload
    assert not re.search(r"^\s*flush ruleset", text, flags=re.M)


def test_ssh_is_rate_limited_per_source_for_v4_and_v6():
    rules = _input_rules(h.nftables_text(make_settings(firewall_ssh_rate=12)))
    limited = [rule for rule in rules if "limit rate over 12/minute" in rule]
    assert len(limited) == 2
    assert any("add @ssh_meter_v4 { ip saddr limit" in rule for rule in limited)
    # IPv6 sources are metered per /64: rotating addresses of one prefix share the limit
    assert any(
        "add @ssh_meter_v6 { ip6 saddr & ffff:ffff:ffff:ffff:: limit" in rule for rule in limited
    )
    # the limit rules come before the accept
    ssh_accept = rules.index("tcp dport 22 accept")
    assert all(rules.index(rule) < ssh_accept for rule in limited)


def test_monitoring_ports_only_from_named_sources_and_extras_open():
    config = make_settings(
        firewall_monitoring_sources=["192.0.2.7", "2001:db8::/64"],
        firewall_extra_tcp_ports=[8443],
    )
    text = h.nftables_text(config)
    rules = _input_rules(text)
    ports = ", ".join(str(p) for p in monitoring_ports())
    assert f"ip saddr @monitoring_v4 tcp dport {{ {ports} }} accept" in rules
    assert f"ip6 saddr @monitoring_v6 tcp dport {{ {ports} }} accept" in rules
    assert "elements = { 192.0.2.7/32 }" in text
    assert "elements = { 2001:db8::/64 }" in text
    assert "tcp dport { 3002, 8443 } accept" in rules


def test_the_marker_tracks_the_ruleset():
    first = h.nftables_text(make_settings())
    assert h.nftables_text(make_settings()) == first, "rendering must be deterministic"
    second = h.nftables_text(make_settings(firewall_extra_tcp_ports=[8443]))
    assert h.nftables_marker(first) != h.nftables_marker(second)
    assert h.nftables_marker(first).startswith("rave-sha256:")


def test_the_ruleset_passes_nft_check(tmp_path):
    nft, unshare = require_tool("nft"), require_tool("unshare")
    config = make_settings(
        firewall_monitoring_sources=["192.0.2.7", "2001:db8::/64"], firewall_log_drops=True
    )
    ruleset = tmp_path / "rules.nft"
    ruleset.write_text(h.nftables_text(config))
    # in a throw-away network namespace: never touches this machine's firewall
    probe = subprocess.run([unshare, "-n", "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        cannot_run_here(f"cannot create a network namespace here: {probe.stderr.strip()}")
    result = subprocess.run(
        [unshare, "-n", nft, "-c", "-f", str(ruleset)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_fail2ban_jails():
    config = make_settings(fail2ban_ignore_addresses=["10.213.0.1"])
    text = h.render_file(config, "hardening/jail.local.j2")
    assert "backend = systemd" in text
    assert "banaction = rave-nftables\n" in text
    assert "banaction_allports = rave-nftables-allports\n" in text
    assert "ignoreip = 127.0.0.1/8 ::1 10.213.0.1/32" in text
    for jail in ("[sshd]", "[nginx-http-auth]", "[nginx-limit-req]"):
        assert jail in text
    assert "port = 3002" in text
    assert "logpath = /var/log/nginx/error.log" in text


def test_sysctl_file_has_every_key_once():
    config = make_settings()
    lines = [
        line
        for line in h.render_file(config, "hardening/sysctl.conf.j2").splitlines()
        if line and not line.startswith("#")
    ]
    keys = [line.split(" = ")[0] for line in lines]
    assert sorted(keys) == sorted(config.sysctl_desired)


def test_unattended_upgrades_are_security_only():
    text = h.render_file(make_settings(), "hardening/unattended-upgrades.conf.j2")
    assert "#clear Unattended-Upgrade::Origins-Pattern;" in text
    origins = re.findall(r'^\s+"(origin=[^"]+)";$', text, flags=re.M)
    assert origins and all("label=Debian-Security" in origin for origin in origins)


def test_modprobe_blocks_each_module():
    config = make_settings()
    text = h.render_file(config, "hardening/modprobe.conf.j2")
    for module in config.kernel_disabled_modules:
        assert f"install {module} /bin/false" in text
        assert f"blacklist {module}" in text


def test_the_fail2ban_action_bans_ipv6_as_a_64_with_the_installed_helper():
    action = (FILES / "hardening" / "rave-nftables.conf").read_text()
    assert "before = nftables.conf" in action  # fail2ban's own action, overridden in part
    assert 'actionban = if [ "<family>" = inet6 ]; then ' + f"{h.F2B_NFT6} ban " in action
    assert 'actionunban = if [ "<family>" = inet6 ]; then ' + f"{h.F2B_NFT6} unban " in action
    assert "addr_flags = flags interval\\;" in action  # the IPv6 set holds prefixes
    allports = (FILES / "hardening" / "rave-nftables-allports.conf").read_text()
    assert "before = rave-nftables.conf" in allports and "type = allports" in allports


def _netns_nft() -> None:
    require_tool("nft")
    require_tool("unshare")
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        cannot_run_here("cannot create a network namespace here")


def test_the_ipv6_ban_helper_bans_the_64_until_its_last_address_is_unbanned():
    """The real helper and nft, in a throw-away network namespace."""
    _netns_nft()
    helper = FILES / "hardening" / "rave-f2b-nft6"
    script = f"""
set -e
nft add table inet t
nft add set inet t s '{{ type ipv6_addr; flags interval; }}'
{helper} ban inet t s 2001:db8:1:2::5
{helper} ban inet t s 2001:db8:1:2:aaaa::6
{helper} ban inet t s 2001:db8:9::1
echo BANNED; nft list set inet t s
{helper} unban inet t s 2001:db8:1:2::5
echo ONE-LEFT; nft list set inet t s
{helper} unban inet t s 2001:db8:1:2:aaaa::6
{helper} unban inet t s 2001:db8:1:2:aaaa::6
echo ZERO-LEFT; nft list set inet t s
"""
    result = subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    banned, rest = result.stdout.split("ONE-LEFT")
    one_left, none_left = rest.split("ZERO-LEFT")
    assert "2001:db8:1:2::/64" in banned and "2001:db8:9::/64" in banned
    assert "2001:db8:1:2::5" not in banned, "the set holds prefixes, never the /128"
    assert "2001:db8:1:2::/64" in one_left, "another banned address of the /64 remains"
    assert "2001:db8:1:2::/64" not in none_left and "2001:db8:9::/64" in none_left
