"""rave.staging without booting anything: names, addresses and the files the tools read."""

import ipaddress
import json
from pathlib import Path

import pytest

from rave import staging


@pytest.fixture
def instance(tmp_path):
    # only names and files: nothing here may start or stop anything of a live instance
    return staging.Instance(7, tmp_path / ".staging")


def test_names_and_addresses_follow_the_instance_id(instance):
    host = instance.host(2)
    assert (host.name, host.address, host.netns) == ("rave-staging-2", "10.213.7.12", "rv7-h2")
    assert instance.gateway == "10.213.7.1"
    assert instance.proxy_url == "http://10.213.7.1:3128"
    assert instance.bridge == "rvbr7"


def test_ipv6_addresses_are_unique_local_and_mirror_the_ipv4_ones(instance):
    assert instance.host(2).address6 == "fd52:a7e0:7::12"
    assert instance.gateway6 == "fd52:a7e0:7::1"
    assert instance.subnet6 == "fd52:a7e0:7::/64"
    # canonical form (what `ip -6 addr` prints), also for instance 0 and the widest names
    assert staging.Instance(0).host(1).address6 == "fd52:a7e0::11"
    assert staging.Instance(254).host(staging.MAX_HOSTS).address6 == "fd52:a7e0:254::22"
    for ident in (0, 7, 254):
        network = ipaddress.ip_network(staging.Instance(ident).subnet6)
        assert network.subnet_of(ipaddress.ip_network("fc00::/7"))  # unique local, never routed
        hosts = [staging.Instance(ident).host(k).address6 for k in range(1, staging.MAX_HOSTS + 1)]
        assert all(ipaddress.ip_address(a) in network for a in hosts)
    assert len({staging.Instance(i).subnet6 for i in range(255)}) == 255


def test_interface_names_fit_the_kernel_limit():
    worst = staging.Instance(254).host(staging.MAX_HOSTS)
    for name in (worst.veth, worst.instance.bridge):
        assert len(name) <= 15  # IFNAMSIZ - 1


def test_instance_id_is_validated(monkeypatch):
    monkeypatch.setenv("RAVE_STAGING_ID", "3")
    assert staging.instance_id() == 3
    for bad in ("300", "-1", "x"):
        monkeypatch.setenv("RAVE_STAGING_ID", bad)
        with pytest.raises(staging.StagingError):
            staging.instance_id()


def test_state_files_pin_the_host_keys(instance):
    hosts = [instance.host(1), instance.host(2)]
    instance.state.mkdir(parents=True)
    staging.ensure_operator_key(instance)
    for host in hosts:
        staging.ensure_host_key(host)
    staging.write_state_files(instance, hosts)

    entries = json.loads(instance.hosts_json.read_text())
    assert [(e["name"], e["address"], e["address6"], e["netns"]) for e in entries] == [
        ("rave-staging-1", "10.213.7.11", "fd52:a7e0:7::11", "rv7-h1"),
        ("rave-staging-2", "10.213.7.12", "fd52:a7e0:7::12", "rv7-h2"),
    ]
    assert all(e["pid"] is None for e in entries)  # nothing runs

    known = instance.known_hosts.read_text().splitlines()
    assert known[0] == (f"rave-staging-1,10.213.7.11,fd52:a7e0:7::11 {hosts[0].host_public_key()}")
    assert known[0].split()[1] == "ssh-ed25519"
    assert hosts[0].host_public_key() != hosts[1].host_public_key()

    config = instance.ssh_config.read_text()
    assert "Host rave-staging-2 10.213.7.12\n    HostName 10.213.7.12\n" in config
    assert "Host fd52:a7e0:7::12\n    User agent\n" in config
    for line in (
        f"IdentityFile {instance.key}",
        f"UserKnownHostsFile {instance.known_hosts}",
        "StrictHostKeyChecking yes",
        "IdentitiesOnly yes",
        "User agent",
    ):
        assert line in config


def test_an_instance_does_not_reuse_another_instances_state(instance, monkeypatch):
    # never touch the machine: instance 5 may be someone's live staging instance
    touched = []
    for name in ("teardown_host", "teardown_network", "stop_container", "teardown_host_network"):
        monkeypatch.setattr(staging, name, lambda *args, name=name: touched.append(name))
    monkeypatch.setattr(staging, "unmount_root", lambda host: touched.append(host.name))
    monkeypatch.setattr(staging.Host, "pid", lambda host: None)
    instance.state.mkdir(parents=True)
    (instance.state / "instance-id").write_text("5\n")
    (instance.state / "hosts" / "1" / "upper").mkdir(parents=True)
    (instance.state / "hosts.json").write_text("[]")
    staging.check_instance_id(instance)  # instance 5 has nothing running: its state goes
    assert (instance.state / "instance-id").read_text() == "7\n"
    assert not (instance.state / "hosts").exists()
    assert not (instance.state / "hosts.json").exists()
    assert touched == ["rave-staging-1"]  # its own mount only; the network is left alone


def test_staging_group_data_follows_the_instance_state_dir(tmp_path, monkeypatch):
    """RAVE_STAGING_DIR (a second checkout's or a bench's instance) decides proxy and keys."""
    import runpy

    (tmp_path / "instance-id").write_text("7\n")
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchInstanceKeyOnlyForThisTest bench"
    (tmp_path / "id_ed25519.pub").write_text(key + "\n")
    monkeypatch.setenv("RAVE_STAGING_DIR", str(tmp_path))
    data = runpy.run_path(str(Path(__file__).resolve().parents[2] / "group_data" / "staging.py"))
    assert data["egress_proxy"] == "http://10.213.7.1:3128"
    assert data["operator_keys"] == [key]
    assert "10.213.7.1" in data["fail2ban_ignore_addresses"]


def test_info_ends_with_every_route_and_where_its_login_comes_from(instance, capsys):
    from rave.components import routes

    (instance.state / "hosts" / "1").mkdir(parents=True)
    staging.print_info(instance)
    out = capsys.readouterr().out
    address = instance.host(1).address
    assert routes(), "no routes declared"
    for route in routes():
        assert f"https://{address}:3002{route.path} " in out
    assert f"https://{address}:3002/ " in out
    assert "rave-secrets get ccr_ui_password --env staging" in out
    assert "rave-secrets get grafana_admin_password --env staging" in out
    # the login lines name secrets, never values (print_info reads no secret at all)
    lines = out.splitlines()
    ccr = next(
        i
        for i, line in enumerate(lines)
        if line.strip().startswith(f"https://{address}:3002/ccr-ui/")
    )
    from rave.secrets.generate import CCR_UI_USER

    assert "login:" in lines[ccr + 1] and f"user {CCR_UI_USER}," in lines[ccr + 1]
