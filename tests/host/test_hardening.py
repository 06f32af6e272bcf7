"""Hardening on a live staging host: every control, checked on the running system.

The daemon, the kernel and the firewall are asked (sshd -T, nft list, /proc/sys, ssh-audit and a
port scan from the control machine), not the files the deploy wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import json
import re
import resource
import shlex
import socket
import ssl
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko
import pytest

from rave import hardening as h
from rave.components import COMPONENTS, loopback_ports, monitoring_ports, public_ports
from rave.deployrun import run_deploy
from rave.observability import enabled_components
from rave.staging import OPERATOR, Instance, instance_id
from tests.host.conftest import MONITORING, host_settings

HERE = Path(__file__).resolve().parent
POLICY = HERE / "ssh-audit-rave.policy"
DEPLOYS = HERE / "deploys"
# `systemd-analyze security` exposure (0 best .. 10 worst) a project-owned service may have
MAX_EXPOSURE = 3.5
# what the default Sandbox() alone must reach on a throw-away unit
MAX_SANDBOX_EXPOSURE = 2.0


def sh(host, command: str) -> str:
    """Run as root on the host; fail with the output if it exits non-zero."""
    result = host.run(command)
    assert result.rc == 0, f"{command!r} exited {result.rc}: {result.stdout}{result.stderr}"
    return result.stdout


def tcp_open(address: str, port: int, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(predicate, timeout: float, interval: float = 1.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def wait_for_ssh(address: str, timeout: float = 60) -> None:
    """sshd answers a new TCP connection with its banner (rate-limit tokens refill 1 per 2s)."""

    def banner() -> bool:
        try:
            with socket.create_connection((address, 22), timeout=3) as conn:
                conn.settimeout(5)
                return conn.recv(64).startswith(b"SSH-2.0-")
        except OSError:
            return False

    wait_until(banner, timeout, interval=2, what=f"a new SSH connection to {address}")


def ssh_audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ssh_audit", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def ssh_audit_policy(address: str) -> subprocess.CompletedProcess[str]:
    """The RAVE SSH policy (ssh-audit-rave.policy) against the daemon answering on address:22."""
    wait_for_ssh(address)
    return ssh_audit("--skip-rate-test", "-P", str(POLICY), address)


@pytest.fixture
def host_name(host) -> str:
    return host.backend.get_hostname()


@pytest.fixture
def address(staging, host_name) -> str:
    return staging.address(host_name)


@pytest.fixture
def address6(staging, host_name) -> str:
    return staging.address6(host_name)


@pytest.fixture(params=["ipv4", "ipv6"])
def each_address(request, staging, host_name) -> str:
    """The host's IPv4 address, then its IPv6 address: the test runs over both families."""
    if request.param == "ipv6":
        return staging.address6(host_name)
    return staging.address(host_name)


def meter_of(address: str) -> str:
    """The firewall's per-source SSH meter that counts connections from this family."""
    return "ssh_meter_v6" if ":" in address else "ssh_meter_v4"


# --- SSH -------------------------------------------------------------------------------------


def sshd_effective(host) -> dict[str, str]:
    config: dict[str, str] = {}
    for line in sh(host, "sshd -T").splitlines():
        key, _, value = line.partition(" ")
        config.setdefault(key, value)
    return config


def test_sshd_effective_configuration(host):
    config = sshd_effective(host)
    assert config["permitrootlogin"] == "no"
    assert config["passwordauthentication"] == "no"
    assert config["kbdinteractiveauthentication"] == "no"
    assert config["pubkeyauthentication"] == "yes"
    assert config["authenticationmethods"] == "publickey"
    assert config["permitemptypasswords"] == "no"
    assert config["hostbasedauthentication"] == "no"
    assert config["allowgroups"] == "rave-ssh"
    assert config["hostkeyalgorithms"] == "ssh-ed25519"
    assert config["hostkey"] == "/etc/ssh/ssh_host_ed25519_key"
    kex = config["kexalgorithms"].split(",")
    assert kex[0] == "sntrup761x25519-sha512@openssh.com"
    assert "curve25519-sha256" in kex, "paramiko (pyinfra) needs curve25519"
    ciphers = config["ciphers"].split(",")
    assert set(ciphers) == {
        "chacha20-poly1305@openssh.com",
        "aes256-gcm@openssh.com",
        "aes128-gcm@openssh.com",
    }
    assert all(mac.endswith("-etm@openssh.com") for mac in config["macs"].split(","))
    assert int(config["maxauthtries"]) <= 3
    assert int(config["logingracetime"]) <= 30
    assert config["maxstartups"] == "10:30:60"
    assert config["loglevel"] == "VERBOSE"
    for forwarding in ("allowtcpforwarding", "allowagentforwarding", "x11forwarding"):
        assert config[forwarding] == "no", forwarding
    assert config["allowstreamlocalforwarding"] == "no"
    assert config["disableforwarding"] == "yes"
    assert config["permittunnel"] == "no"
    assert config["permituserenvironment"] == "no"


def test_ed25519_is_the_only_host_key(host):
    keys = sh(host, "ls /etc/ssh").split()
    assert sorted(k for k in keys if k.startswith("ssh_host_")) == [
        "ssh_host_ed25519_key",
        "ssh_host_ed25519_key.pub",
    ]
    assert host.file("/etc/ssh/ssh_host_ed25519_key").mode == 0o600


def test_short_moduli_are_gone(host):
    count = sh(host, f"awk '$1 !~ /^#/ && $5 < {h.MODULI_MIN_BITS}' /etc/ssh/moduli | wc -l")
    assert int(count) == 0


def test_ssh_runs_as_ssh_service_not_socket_activated(host):
    assert host.service("ssh").is_running
    assert host.service("ssh").is_enabled
    assert host.run("systemctl is-active ssh.socket").stdout.strip() != "active"
    assert host.run("systemctl is-enabled ssh.socket").stdout.strip() != "enabled"


def ssh_port_owner(host) -> set[str]:
    """Which processes hold the listening sockets of port 22 ("systemd" when socket-activated)."""
    listeners = sh(host, "ss -Hltnp 'sport = :22'")
    return set(re.findall(r'\("([^"]+)",pid=', listeners))


def restore_ssh_service(host) -> None:
    """Back to what the deploy makes: ssh.service serving, ssh.socket off."""
    host.run("systemctl disable --now ssh.socket")
    sh(host, "systemctl enable ssh.service && systemctl restart ssh.service")


def test_a_socket_activated_sshd_is_switched_to_ssh_service_with_the_hardened_config(
    staging, host, host_name, address, address6
):
    """Debian 12 offers socket activation (README.Debian: disable ssh.service, enable ssh.socket):
    systemd then owns port 22 and starts ssh.service on the first connection, and sshd_config's
    listeners are ignored. Boot the host in that state with Debian's stock sshd_config, prove the
    socket serves the stock config (the audit fails), rerun the hardening deploy and audit the
    running daemon on the port (IPv4 and IPv6): ssh.service must now serve the hardened config."""
    hardened_sha = sh(host, f"sha256sum {h.SSHD_CONFIG}").split()[0]
    sh(host, f"install -m 644 /usr/share/openssh/sshd_config {h.SSHD_CONFIG}")
    sh(host, "systemctl disable --now ssh.service && systemctl enable --now ssh.socket")
    try:
        assert ssh_port_owner(host) == {"systemd"}, "systemd holds port 22 (socket activation)"
        # the host starts that way: sockets.target listens, the harness's ssh activates sshd
        staging.reboot(host_name)
        assert sh(host, "systemctl is-active ssh.socket").strip() == "active"
        assert sh(host, "systemctl is-enabled ssh.socket").strip() == "enabled"
        assert host.run("systemctl is-enabled ssh.service").stdout.strip() == "disabled"
        assert "systemd" in ssh_port_owner(host), "systemd holds port 22 (socket activation)"
        assert "ssh.socket" in sh(host, "systemctl show -p TriggeredBy --value ssh.service")
        stock = ssh_audit_policy(address)
        assert stock.returncode != 0, "the stock Debian config passed the RAVE policy"

        result = run_deploy(
            "inventories/staging.py", [str(DEPLOYS / "hardening.py")], limit=host_name
        )
        assert result.ok, result.log_tail()
        changed = result.changed_operations()
        print("changed:", *changed, sep="\n  ")
        assert any("Serve SSH from ssh.service" in op for op in changed), changed
        assert sh(host, f"sha256sum {h.SSHD_CONFIG}").split()[0] == hardened_sha

        assert host.run("systemctl is-active ssh.socket").stdout.strip() != "active"
        assert host.run("systemctl is-enabled ssh.socket").stdout.strip() != "enabled"
        assert host.service("ssh").is_running
        assert host.service("ssh").is_enabled
        # sshd itself (ssh.service's main process) holds port 22 again, on IPv4 and IPv6
        main_pid = sh(host, "systemctl show -p MainPID --value ssh.service").strip()
        listeners = sh(host, "ss -Hltnp 'sport = :22'")
        assert ssh_port_owner(host) == {"sshd"}, listeners
        assert set(re.findall(r"pid=(\d+)", listeners)) == {main_pid}, listeners
        assert "0.0.0.0:22 " in listeners and "[::]:22 " in listeners, listeners
        for served in (address, address6):
            audit = ssh_audit_policy(served)
            assert audit.returncode == 0, audit.stdout + audit.stderr
            assert "Passed" in audit.stdout

        # and the next run leaves SSH alone (no switch, no restart)
        again = run_deploy(
            "inventories/staging.py", [str(DEPLOYS / "hardening_ssh.py")], limit=host_name
        )
        assert again.ok, again.log_tail()
        assert again.changed_operations() == [], again.changed_operations()
    finally:
        if sh(host, f"sha256sum {h.SSHD_CONFIG}").split()[0] != hardened_sha:
            restore = run_deploy(
                "inventories/staging.py", [str(DEPLOYS / "hardening_ssh.py")], limit=host_name
            )
            assert restore.ok, restore.log_tail()
        if ssh_port_owner(host) != {"sshd"}:
            restore_ssh_service(host)
        wait_for_ssh(address)


def test_operator_keys_are_exactly_the_configured_ones(host):
    expected = Path(str(Instance(instance_id()).key) + ".pub").read_text().split()[:2]
    keys_file = host.file(f"/home/{OPERATOR}/.ssh/authorized_keys")
    assert keys_file.mode == 0o600
    assert keys_file.user == OPERATOR
    lines = [line.split()[:2] for line in keys_file.content_string.splitlines() if line.strip()]
    assert lines == [expected]
    assert "rave-ssh" in host.user(OPERATOR).groups


def test_running_daemon_offers_public_key_only(each_address):
    """Ask the running sshd (not its file) which authentications it allows."""
    with socket.create_connection((each_address, 22), timeout=10) as conn:
        transport = paramiko.Transport(conn)
        try:
            transport.start_client(timeout=15)
            key = transport.get_remote_server_key()
            assert key.get_name() == "ssh-ed25519"
            with pytest.raises(paramiko.BadAuthenticationType) as refused:
                transport.auth_none(OPERATOR)
            assert refused.value.allowed_types == ["publickey"]
        finally:
            transport.close()


def test_root_cannot_log_in_even_with_the_operator_key(address):
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    with pytest.raises(paramiko.AuthenticationException):
        client.connect(
            address,
            username="root",
            key_filename=str(Instance(instance_id()).key),
            look_for_keys=False,
            allow_agent=False,
            timeout=10,
        )
    client.close()


def test_ssh_audit_policy_passes(each_address):
    """The external auditor, from the control machine, against the running daemon."""
    result = ssh_audit_policy(each_address)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Passed" in result.stdout
    assert "Failed" not in result.stdout


def test_ssh_audit_standard_has_no_failures(address):
    """The full audit: no algorithm fails. Printed: its warnings (today only that the curve25519
    exchanges paramiko needs are not post-quantum; sntrup761x25519 comes first, so OpenSSH
    clients use it) and version-based CVE matches (Debian backports fixes without changing the
    version, so those are printed, not judged)."""
    wait_for_ssh(address)
    result = ssh_audit("--skip-rate-test", "-j", address)
    report = json.loads(result.stdout)
    failures, warnings = [], []
    for section in ("kex", "key", "enc", "mac"):
        for item in report.get(section, []):
            notes = item.get("notes", {})
            failures += [f"{item['algorithm']}: {n}" for n in notes.get("fail", [])]
            warnings += [f"{item['algorithm']}: {n}" for n in notes.get("warn", [])]
    print("warnings:", *warnings, sep="\n  ")
    print("version-based CVE matches:", report.get("cves", []))
    assert not failures, failures


def test_a_broken_sshd_setting_is_refused_by_sshd_t_and_the_daemon_is_untouched(host, host_name):
    before_pid = sh(host, "systemctl show -p MainPID --value ssh.service").strip()
    before_sha = sh(host, f"sha256sum {h.SSHD_CONFIG}").split()[0]
    before_ciphers = sshd_effective(host)["ciphers"]

    broken = json.dumps(["aes256-gcm@openssh.com", "aes512-gcm@openssh.com"])
    result = run_deploy(
        "inventories/staging.py",
        [str(DEPLOYS / "hardening_ssh.py")],
        limit=host_name,
        extra_args=["--data", f"sshd_ciphers={broken}"],
    )
    try:
        assert result.returncode != 0, "a config sshd -t rejects must fail the deploy"
        log = result.stdout + result.stderr
        refused = re.search(
            r"stage the SSH access change.*?\n(.*Bad SSH2 cipher spec[^\n]*)", log, re.S
        )
        assert refused, result.log_tail()
        print(refused.group(1))
        # sshd -t refused it before anything was staged: no login tried, no revert armed
        assert "Log in anew" not in log
        assert host.run("systemctl is-active rave-sshd-revert.timer").stdout.strip() != "active"
        # the candidate holds the bad value; the installed config and the daemon do not
        assert "aes512-gcm@openssh.com" in sh(host, f"cat {h.SSHD_CANDIDATE}")
        assert sh(host, f"sha256sum {h.SSHD_CONFIG}").split()[0] == before_sha
        assert sh(host, "systemctl show -p MainPID --value ssh.service").strip() == before_pid
        assert sshd_effective(host)["ciphers"] == before_ciphers
        assert host.service("ssh").is_running
    finally:
        restore = run_deploy(
            "inventories/staging.py", [str(DEPLOYS / "hardening_ssh.py")], limit=host_name
        )
        assert restore.ok, restore.log_tail()
    assert "aes512-gcm" not in sh(host, f"cat {h.SSHD_CANDIDATE}")


# --- firewall --------------------------------------------------------------------------------


def live_marker(host) -> str | None:
    return h.NftRaveMarker().process(sh(host, h.NftRaveMarker().command()).splitlines())


def test_firewall_ruleset_is_loaded_and_matches_the_installed_file(host):
    ruleset = sh(host, "nft list table inet rave")
    print(ruleset)
    installed = sh(host, f"cat {h.NFT_CONFIG}")
    assert live_marker(host) == h.nftables_marker(installed)
    assert sh(host, f"cat {h.NFT_CANDIDATE}") == installed
    assert "type filter hook input priority filter; policy drop;" in ruleset
    assert "type filter hook forward priority filter; policy drop;" in ruleset
    assert 'iif "lo" accept' in ruleset
    assert "ct state established,related accept" in ruleset
    assert re.search(
        r"tcp dport 22 ct state new add @ssh_meter_v4 \{ ip saddr limit rate over", ruleset
    )
    assert re.search(
        r"tcp dport 22 ct state new add @ssh_meter_v6 "
        r"\{ ip6 saddr & ffff:ffff:ffff:ffff:: limit rate over",
        ruleset,
    )
    others = sorted(set(public_ports()) - {22})
    assert others == [3002]
    accepts = re.findall(r"^\s*tcp dport (\d+|\{ [\d, ]+ \}) accept$", ruleset, flags=re.M)
    opened = {int(p) for group in accepts for p in re.findall(r"\d+", group)}
    assert opened == set(public_ports()), "the firewall opens exactly components.public_ports()"
    for port in monitoring_ports():
        assert not re.search(rf"^\s*tcp dport .*\b{port}\b.* accept$", ruleset, flags=re.M) or (
            "saddr @monitoring" in ruleset
        )
    assert host.service("nftables").is_enabled


def test_the_installed_ruleset_passes_nft_check_on_the_host(host):
    sh(host, f"nft -c -f {h.NFT_CONFIG}")


def test_ipv6_ssh_sources_are_metered_per_64(host, address6):
    """A new SSH connection from the control machine over IPv6 (its address on the staging
    /64) lands in the meter as the /64, the interface identifier masked off, never the /128."""
    wait_for_ssh(address6, timeout=90)
    meter = sh(host, "nft list set inet rave ssh_meter_v6")
    print(meter)
    listed = meter.partition("elements = {")[2]
    elements = [ipaddress.IPv6Address(e) for e in re.findall(r"[0-9a-f]*:[0-9a-f:]+", listed)]
    prefix = ipaddress.IPv6Network(f"{address6}/64", strict=False).network_address
    assert prefix in elements, meter
    assert all(int(e) & (2**64 - 1) == 0 for e in elements), "a meter key with host bits"


def test_port_scan_finds_only_ssh_and_the_edge(each_address):
    """A full TCP connect scan (1-65535) from the control machine over the staging subnet,
    over IPv4 and over IPv6 (the `ip6` half of the ruleset and sshd/nginx on [::])."""
    address = each_address
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = min(hard, 8192)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        open_ports = asyncio.run(
            _scan(address, range(1, 65536), concurrency=min(4000, limit - 256), timeout=2.0)
        )
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    print(f"open TCP ports on {address}: {sorted(open_ports)}")
    assert open_ports <= {22, 3002}
    # The mass scan can miss 22 when earlier tests used up this source's SSH rate-limit tokens
    # (new connections are then dropped, which looks filtered): probe it on its own, patiently.
    if 22 not in open_ports:
        wait_for_ssh(address, timeout=90)
    if 3002 not in open_ports:  # a single slow answer under load; the edge must be reachable
        socket.create_connection((address, 3002), timeout=10).close()


async def _scan(address: str, ports: range, concurrency: int, timeout: float) -> set[int]:
    found: set[int] = set()
    queue = iter(ports)

    async def worker() -> None:
        for port in queue:
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(address, port), timeout=timeout
                )
            except (TimeoutError, OSError) as error:
                if isinstance(error, OSError) and error.errno == errno.EMFILE:
                    raise
                continue
            found.add(port)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return found


def test_ssh_new_connections_are_rate_limited_per_source(host, each_address):
    """A burst of new connections beyond the limit is dropped (and counted by the meter of
    the family: ssh_meter_v4 or ssh_meter_v6); the limit then refills."""
    address = each_address
    meter = meter_of(address)
    wait_for_ssh(address)
    dropped_before = _ssh_drops(host, meter)
    limit = re.search(rf"@{meter} .* burst (\d+) packets", sh(host, "nft list table inet rave"))
    assert limit
    burst = 2 * int(limit.group(1))  # twice what the limit lets through at once

    async def connect_all() -> int:
        async def one() -> bool:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(address, 22), 2.5)
            except (TimeoutError, OSError):
                return False
            writer.close()
            return True

        results = await asyncio.gather(*(one() for _ in range(burst)))
        return sum(results)

    accepted = asyncio.run(connect_all())
    assert accepted < burst, "every connection of the burst got through"
    assert _ssh_drops(host, meter) > dropped_before
    wait_for_ssh(address, timeout=90)


def _ssh_drops(host, meter: str) -> int:
    ruleset = sh(host, "nft list chain inet rave input")
    match = re.search(rf"@{meter} .* counter packets (\d+) bytes \d+ drop", ruleset)
    assert match, ruleset
    return int(match.group(1))


def test_a_lockout_ruleset_is_reverted_automatically(host, address):
    """A ruleset that would cut SSH is rolled back by the timer if nobody confirms it."""
    deployed = live_marker(host)
    installed_sha = sh(host, f"sha256sum {h.NFT_CONFIG}").split()[0]
    lockout = (
        "table inet rave\ndelete table inet rave\n"
        'table inet rave {\n\tcomment "rave-sha256:lockout-test"\n'
        "\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n"
        '\t\tiif "lo" accept\n\t\tct state established,related accept\n\t}\n}\n'
    )
    sh(host, f"printf %s {shlex.quote(lockout)} > /run/rave-lockout.nft")
    sh(host, f"{h.NFT_APPLY} stage /run/rave-lockout.nft 30")
    # our own (ESTABLISHED) connection still works, new ones are dropped
    assert live_marker(host) == "rave-sha256:lockout-test"
    assert not tcp_open(address, 22, timeout=3)
    # nobody confirms: the timer restores the deployed ruleset
    wait_until(lambda: live_marker(host) == deployed, 90, interval=2, what="the revert")
    wait_for_ssh(address)
    assert sh(host, f"sha256sum {h.NFT_CONFIG}").split()[0] == installed_sha
    log = sh(host, "journalctl -q -t rave-nft-apply --since -5min --no-pager")
    assert "reverted" in log
    sh(host, "rm -f /run/rave-lockout.nft")


def test_a_broken_firewall_setting_is_refused_by_nft_check(host, host_name):
    """Overlapping monitoring sources pass validation but not `nft -c`: nothing is loaded."""
    deployed = live_marker(host)
    installed_sha = sh(host, f"sha256sum {h.NFT_CONFIG}").split()[0]
    broken = json.dumps(["192.0.2.0/24", "192.0.2.7"])
    result = run_deploy(
        "inventories/staging.py",
        [str(DEPLOYS / "hardening_firewall.py")],
        limit=host_name,
        extra_args=["--data", f"firewall_monitoring_sources={broken}"],
    )
    try:
        assert result.returncode != 0
        log = result.stdout + result.stderr
        assert "conflicting intervals" in log, result.log_tail()
        assert "Reconnect over a new SSH connection" not in log
        assert live_marker(host) == deployed
        assert sh(host, f"sha256sum {h.NFT_CONFIG}").split()[0] == installed_sha
        assert host.run("systemctl is-active rave-nft-revert.timer").stdout.strip() != "active"
    finally:
        restore = run_deploy(
            "inventories/staging.py", [str(DEPLOYS / "hardening_firewall.py")], limit=host_name
        )
        assert restore.ok, restore.log_tail()


def tcp_state(address: str, port: int, timeout: float = 3.0) -> str:
    """open / closed (the host answered: RST) / filtered (dropped: no answer)."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return "open"
    except ConnectionRefusedError:
        return "closed"
    except OSError:
        return "filtered"


def test_monitoring_ports_open_only_to_the_named_sources(staging, host, host_name, address):
    """Deployed through the real path (nft -c, timed revert, reconnect, confirm), then undone."""
    port = monitoring_ports()[0]
    if MONITORING:  # the exporters listen beyond loopback for the monitoring host
        pytest.skip(f"{port} listens for the monitoring host (test_multihost.py: who reaches it)")
    listening = host.socket(f"tcp://0.0.0.0:{port}").is_listening
    assert not listening, f"{port} listens beyond loopback, but no monitoring source is set"
    deployed = live_marker(host)
    assert tcp_state(address, port) == "filtered"
    control = staging.instance.gateway
    result = run_deploy(
        "inventories/staging.py",
        [str(DEPLOYS / "hardening_firewall.py")],
        limit=host_name,
        extra_args=["--data", f"firewall_monitoring_sources={json.dumps([control])}"],
    )
    try:
        assert result.ok, result.log_tail()
        assert any("Confirm the firewall" in op for op in result.changed_operations())
        ruleset = sh(host, "nft list table inet rave")
        # (with a monitoring host in the inventory its address is an element too)
        assert re.search(rf"elements = {{[^}}]*\b{re.escape(control)}\b", ruleset), ruleset
        assert re.search(rf"ip saddr @monitoring_v4 tcp dport \{{ [\d, ]*\b{port}\b", ruleset)
        assert host.run("systemctl is-active rave-nft-revert.timer").stdout.strip() != "active"
        assert sh(host, f"cat {h.NFT_CONFIG}") == sh(host, f"cat {h.NFT_CANDIDATE}")
        # the control machine now reaches the port (nothing listens: the host answers RST)
        assert tcp_state(address, port) == "closed"
    finally:
        restore = run_deploy(
            "inventories/staging.py", [str(DEPLOYS / "hardening_firewall.py")], limit=host_name
        )
        assert restore.ok, restore.log_tail()
    assert live_marker(host) == deployed
    assert tcp_state(address, port) == "filtered"


def test_the_edge_serves_only_tls_1_3_over_ipv6(address6):
    """nginx listens on [::]:3002 too: TLS 1.3 is negotiated there, TLS 1.2 is refused."""
    port = public_ports()[-1]
    assert port == 3002
    modern = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    modern.check_hostname = False
    modern.verify_mode = ssl.CERT_NONE  # the certificate is checked by tests/host/test_edge.py
    with (
        socket.create_connection((address6, port), timeout=10) as raw,
        modern.wrap_socket(raw) as tls,
    ):
        assert tls.version() == "TLSv1.3"
        assert tls.getpeername()[0] == address6
        tls.sendall(b"GET / HTTP/1.1\r\nHost: rave\r\nConnection: close\r\n\r\n")
        assert tls.recv(64).startswith(b"HTTP/1.1 ")
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection((address6, port), timeout=10) as raw,
        pytest.raises(ssl.SSLError),
    ):
        old.wrap_socket(raw).close()


def test_internal_ports_are_dropped_over_ipv6(host, address, address6):
    """Every non-public port (components LOOPBACK and MONITORING) is dropped over IPv6, even
    with a listener on all addresses: a probe listens on [::]:<free internal port>, answers on
    the host's own IPv6 address from inside, and is still unreachable from the control side."""
    internal = loopback_ports()
    assert internal, "components declare no internal ports"
    with ThreadPoolExecutor(max_workers=len(internal)) as pool:
        states = dict(
            zip(internal, pool.map(lambda p: tcp_state(address6, p), internal), strict=True)
        )
    print(f"internal ports over IPv6 from the control side: {states}")
    assert all(state == "filtered" for state in states.values()), states

    listening = sh(host, "ss -Hltn").split()
    free = [p for p in internal if not any(w.endswith(f":{p}") for w in listening)]
    if not free:
        pytest.fail(f"every internal port {internal} is in use: no free port for the probe")
    port = free[0]
    unit = "rave-ipv6-probe"
    host.run(f"systemctl stop {unit}.service; systemctl reset-failed {unit}.service")
    listener = (
        "import socket, time; "
        f"s = socket.create_server(('::', {port}), family=socket.AF_INET6, dualstack_ipv6=True); "
        "time.sleep(300)"
    )
    sh(host, f"systemd-run --quiet --unit={unit} python3 -c {shlex.quote(listener)}")
    try:
        wait_until(
            lambda: host.run(f"ss -Hltn 'sport = :{port}'").stdout.strip(),
            30,
            what=f"the probe listening on {port}",
        )
        # the listener itself is reachable on the host's IPv6 address (from the host: lo)
        connect = f"import socket; socket.create_connection(('{address6}', {port}), 5)"
        inside = host.run(f"python3 -c {shlex.quote(connect)}")
        assert inside.rc == 0, inside.stderr
        assert tcp_state(address6, port) == "filtered"
        assert tcp_state(address, port) == "filtered"
    finally:
        host.run(f"systemctl stop {unit}.service")


# --- fail2ban --------------------------------------------------------------------------------


def test_fail2ban_jails_run_with_systemd_backend_and_nftables(host):
    assert host.service("fail2ban").is_running
    status = sh(host, "fail2ban-client status")
    jails = set(re.search(r"Jail list:\s*(.*)", status).group(1).replace(" ", "").split(","))
    assert {"sshd", "nginx-http-auth", "nginx-limit-req"} <= jails
    assert "rave-nftables" in sh(host, "fail2ban-client get sshd actions")
    journal = sh(host, "fail2ban-client status sshd")
    assert "Journal matches" in journal, "the sshd jail must read the journal (backend systemd)"


# documentation addresses (TEST-NET-1, 2001:db8::/32): only elements of a set, never destinations
@pytest.mark.parametrize("probe", ["192.0.2.123", "2001:db8::123"], ids=["ipv4", "ipv6"])
def test_fail2ban_bans_survive_a_firewall_reload(host, probe):
    sh(host, f"fail2ban-client set sshd banip {probe}")
    try:
        banned = probe if "." in probe else "2001:db8::/64"  # IPv6: its /64
        wait_until(
            lambda: banned in host.run("nft list table inet f2b-table").stdout,
            30,
            what="the ban in fail2ban's table",
        )
        sh(host, "systemctl reload nftables.service")
        assert banned in sh(host, "nft list table inet f2b-table")
        assert live_marker(host) is not None
    finally:
        sh(host, f"fail2ban-client set sshd unbanip {probe}")


def _f2b_v6_set(host) -> str:
    return host.run("nft list set inet f2b-table addr6-set-sshd").stdout


def test_fail2ban_bans_an_ipv6_offender_as_its_64(host):
    """`banip` of one IPv6 address drops its whole /64 (a client rotating addresses of its
    prefix stays banned); the /64 is lifted when its last banned address is unbanned."""
    first, second = "2001:db8:1:2::5", "2001:db8:1:2:abcd::6"
    sh(host, f"fail2ban-client set sshd banip {first}")
    try:
        wait_until(lambda: "2001:db8:1:2::/64" in _f2b_v6_set(host), 30, what="the /64 in the set")
        listing = _f2b_v6_set(host)
        print(listing)
        assert "flags interval" in listing
        assert first not in listing, "the /128 itself is in the drop set"
        rules = sh(host, "nft list chain inet f2b-table f2b-chain")
        assert re.search(r"tcp dport 22 ip6 saddr @addr6-set-sshd reject", rules), rules
        sh(host, f"fail2ban-client set sshd banip {second}")
        sh(host, f"fail2ban-client set sshd unbanip {first}")
        assert "2001:db8:1:2::/64" in _f2b_v6_set(host), "unbanned while another address is"
    finally:
        host.run(f"fail2ban-client set sshd unbanip {first}")
        host.run(f"fail2ban-client set sshd unbanip {second}")
    wait_until(lambda: "2001:db8:1:2::/64" not in _f2b_v6_set(host), 30, what="the /64 unbanned")
    assert "2001:db8:1:2" not in sh(host, "nft list table inet f2b-table")


def test_the_firewall_survives_fail2ban_restarts(host):
    marker = live_marker(host)
    sh(host, "systemctl restart fail2ban.service")
    wait_until(
        lambda: host.run("fail2ban-client status sshd").rc == 0, 60, what="fail2ban's sshd jail"
    )
    assert live_marker(host) == marker
    # and stopping nftables.service removes only the RAVE table, never fail2ban's
    assert "delete table inet rave" in sh(host, "systemctl show -p ExecStop nftables.service")


# --- kernel ----------------------------------------------------------------------------------


def _desired_sysctl(host) -> dict[str, str]:
    desired = {}
    for line in sh(host, "cat /etc/sysctl.d/90-rave-hardening.conf").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            desired[key.strip()] = value.strip()
    return desired


def test_sysctl_applied_where_writable_and_the_rest_reported(host):
    desired = _desired_sysctl(host)
    assert len(desired) >= 30
    fact = h.SysctlState()
    state = fact.process(sh(host, fact.command(tuple(sorted(desired)))).splitlines())
    report = json.loads(sh(host, f"cat {h.REPORT_PATH}"))
    reported = report.get("exceptions", {}).get("sysctl", {})
    applied = [key for key in desired if key not in reported]
    print(f"applied: {len(applied)}, reported as unsettable here: {sorted(reported)}")
    for key in applied:
        assert state[key].value == desired[key], f"{key} is {state[key].value}"
    for key, item in reported.items():
        assert not state[key].writable, f"{key} is writable but was only reported"
        assert state[key].value != desired[key]
        assert item["desired"] == desired[key]
    # network keys are per-namespace, so even a container applies them
    assert all(key in applied for key in desired if key.startswith("net.ipv4.conf."))
    if report["virtualization"] == "none":
        assert not reported


def test_container_limits_are_reported_once_and_nothing_is_failed(host):
    report = json.loads(sh(host, f"cat {h.REPORT_PATH}"))
    failed = sh(host, "systemctl list-units --failed --no-legend --plain").strip()
    assert "auditd" not in failed
    assert host.file(h.AUDIT_RULES).contains("-w /etc/sudoers -p wa -k sudoers")
    if report["virtualization"] != "none":
        assert "auditd" in report["exceptions"]
        assert "apparmor" in report["exceptions"]
        assert host.run("systemctl is-active auditd").stdout.strip() == "inactive"
    else:
        assert host.service("auditd").is_running
        assert "sudoers" in sh(host, "auditctl -l")


def test_modules_and_core_dumps(host):
    modprobe = host.file("/etc/modprobe.d/rave-hardening.conf").content_string
    for module in ("cramfs", "udf", "dccp", "sctp", "usb-storage"):
        assert f"install {module} /bin/false" in modprobe
    assert "Storage=none" in sh(host, "systemd-analyze cat-config systemd/coredump.conf")
    assert sh(host, "systemctl show -p DefaultLimitCORE --value").strip() == "0"
    assert "hard\tcore\t0" in host.file("/etc/security/limits.d/rave-nocore.conf").content_string


def test_a_login_session_cannot_dump_core(staging, host_name):
    result = staging.ssh(host_name, "ulimit -Hc")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"


# --- system ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "group", "mode"),
    [
        ("/etc/passwd", "root", 0o644),
        ("/etc/group", "root", 0o644),
        ("/etc/shadow", "shadow", 0o640),
        ("/etc/gshadow", "shadow", 0o640),
    ],
)
def test_identity_file_permissions(host, path, group, mode):
    target = host.file(path)
    assert (target.user, target.group, target.mode) == ("root", group, mode)


def test_umask_shm_journald_and_updates(host):
    assert re.search(r"^UMASK\s+027$", host.file("/etc/login.defs").content_string, re.M)
    assert re.search(
        r"^tmpfs\s+/dev/shm\s+tmpfs\s+defaults,nodev,nosuid,noexec\s",
        host.file("/etc/fstab").content_string,
        re.M,
    )
    options = sh(host, "findmnt -n -o OPTIONS /dev/shm").strip().split(",")
    assert {"nodev", "nosuid", "noexec"} <= set(options)
    journald = sh(host, "systemd-analyze cat-config systemd/journald.conf")
    assert "Storage=persistent" in journald
    assert "SystemMaxUse=" in journald
    assert host.file("/var/log/journal").is_directory
    assert host.package("unattended-upgrades").is_installed
    origins = sh(host, "apt-config dump Unattended-Upgrade::Origins-Pattern")
    patterns = re.findall(r'"(origin=[^"]*)"', origins)
    assert patterns and all("label=Debian-Security" in p for p in patterns), origins
    periodic = sh(host, "apt-config dump APT::Periodic::Unattended-Upgrade")
    assert '"1"' in periodic


def test_unneeded_packages_are_absent(host):
    for package in ("telnet", "rsh-client", "nis", "xinetd", "avahi-daemon", "rpcbind"):
        assert not host.package(package).is_installed, package


def test_only_declared_ports_listen_beyond_loopback(host):
    allowed = set(public_ports()) | set(monitoring_ports())
    listeners = sh(host, "ss -Hltnu").splitlines()
    exposed = []
    for line in listeners:
        local = line.split()[4]
        addr, _, port = local.rpartition(":")
        if addr.strip("[]").split("%")[0] in ("127.0.0.1", "::1") or addr.startswith("127."):
            continue
        exposed.append(int(port))
    print(f"listening beyond loopback: {sorted(set(exposed))}")
    assert set(exposed) <= allowed


# --- systemd sandboxing ----------------------------------------------------------------------


def _exposure(host, unit: str) -> float:
    report = sh(host, f"systemd-analyze security --no-pager {unit}")
    print(report)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", report)
    assert match, report
    return float(match.group(1))


# units the project writes itself (components.py) and the secrets unit (tasks/secrets.py)
PROJECT_UNITS = sorted({c.unit for c in COMPONENTS if c.owned_unit} | {"rave-secrets"})


@pytest.mark.parametrize("unit", PROJECT_UNITS)
def test_project_services_are_sandboxed(host, unit):
    # an optional component (e.g. ccr_install = False) is absent by the host's settings
    enabled = {c.unit for c in enabled_components(host_settings(host))} | {"rave-secrets"}
    deployed = host.run(f"systemctl cat {unit}.service").rc == 0
    if unit not in enabled:
        assert not deployed, f"{unit}.service is deployed, but this host's settings leave it out"
        return
    assert deployed, f"{unit}.service is not deployed on this host"
    exposure = _exposure(host, f"{unit}.service")
    assert exposure <= MAX_EXPOSURE, f"{unit}: exposure {exposure} > {MAX_EXPOSURE}"


def test_the_reusable_sandbox_scores_well_on_the_host(host):
    """rave.sandbox's default profile, applied to a throw-away unit on the live host."""
    from rave.modes import PROFILES, Mode
    from rave.sandbox import Sandbox, directives

    properties = " ".join(
        f"-p {shlex.quote(f'{key}={value}')}"
        for key, value in directives(Sandbox(), PROFILES[Mode.SAFE].limits_for("webhook"))
    )
    unit = "rave-sandbox-probe"
    host.run(f"systemctl stop {unit}.service; systemctl reset-failed {unit}.service")
    sh(host, f"systemd-run --quiet --unit={unit} -p DynamicUser=yes {properties} sleep 300")
    try:
        wait_until(
            lambda: host.run(f"systemctl is-active {unit}").stdout.strip() == "active",
            30,
            what="the probe unit",
        )
        exposure = _exposure(host, f"{unit}.service")
        assert exposure <= MAX_SANDBOX_EXPOSURE
    finally:
        host.run(f"systemctl stop {unit}.service")


# packaged daemons, confined by a sandbox.conf drop-in of the task that owns them
PACKAGED_MAX_EXPOSURE = {
    "nginx": 2.5,  # tasks/edge.py
    "postgresql@15-main": 2.5,  # tasks/database.py
    "fail2ban": 5.0,  # tasks/hardening.py
}
# each one still does its job inside the sandbox
PACKAGED_WORKS = {
    "nginx": "curl -sk -o /dev/null -w '%{http_code}' https://127.0.0.1:3002/",
    "postgresql@15-main": "cd / && runuser -u postgres -- psql -XAtc 'SELECT 41 + 1'",
    "fail2ban": "fail2ban-client ping",
}
PACKAGED_REPLIES = {"nginx": "200", "postgresql@15-main": "42", "fail2ban": "pong"}


@pytest.mark.parametrize("unit", sorted(PACKAGED_MAX_EXPOSURE))
def test_packaged_services_are_sandboxed_and_work(host, unit):
    assert host.file(f"/etc/systemd/system/{unit}.service.d/sandbox.conf").exists
    assert host.service(unit).is_running
    exposure = _exposure(host, f"{unit}.service")
    assert exposure <= PACKAGED_MAX_EXPOSURE[unit], f"{unit}: exposure {exposure}"
    assert PACKAGED_REPLIES[unit] in sh(host, PACKAGED_WORKS[unit])


def test_ssh_is_deployed_and_scored(host):
    """ssh is left unconfined (a sandbox would confine the operators' shells): deployed, and its
    score is a number below the worst (a bare root service scores 9.6), printed with -s."""
    assert host.run("systemctl cat ssh.service").rc == 0, "ssh.service is not deployed"
    exposure = _exposure(host, "ssh.service")
    print(f"ssh.service exposure {exposure}")
    assert 0 <= exposure < 10, f"ssh: exposure {exposure}"


# --- after a reboot --------------------------------------------------------------------------


def test_controls_survive_a_reboot(staging, host, host_name, address):
    before = {
        "marker": live_marker(host),
        "ciphers": sshd_effective(host)["ciphers"],
    }
    staging.reboot(host_name)
    assert live_marker(host) == before["marker"], "nftables.service loads /etc/nftables.conf"
    assert sshd_effective(host)["ciphers"] == before["ciphers"]
    assert host.service("ssh").is_running
    wait_until(
        lambda: host.run("fail2ban-client status sshd").rc == 0,
        60,
        what="fail2ban's sshd jail after the reboot",
    )
    failed = sh(host, "systemctl list-units --failed --no-legend --plain")
    for unit in ("ssh", "nftables", "fail2ban", "auditd", "systemd-journald"):
        assert f"{unit}.service" not in failed, failed
    wait_for_ssh(address)
