"""The staging harness itself: cheap checks that the hosts are what the other suites assume."""

import json
import subprocess

import pytest

from tests.host.conftest import HOST_NAMES, rave_staging


def _boot_id(staging, name: str) -> str:
    result = staging.ssh(name, "cat /proc/sys/kernel/random/boot_id")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_up_is_a_no_op_for_running_hosts(staging):
    before = json.loads(staging.instance.hosts_json.read_text())
    boots = {name: _boot_id(staging, name) for name in staging.names}
    rave_staging("up")
    after = json.loads(staging.instance.hosts_json.read_text())
    assert [h["pid"] for h in after] == [h["pid"] for h in before]
    assert all(h["pid"] for h in after)
    assert {name: _boot_id(staging, name) for name in staging.names} == boots


@pytest.mark.parametrize("name", HOST_NAMES)
def test_ssh_alias_with_checked_host_key(staging, name):
    result = staging.ssh(name, "hostname")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == name
    # the known_hosts file pins the key: StrictHostKeyChecking is on in the ssh_config
    config = staging.instance.ssh_config.read_text()
    assert "StrictHostKeyChecking yes" in config


@pytest.mark.parametrize("name", HOST_NAMES)
def test_address_lives_in_its_own_netns_only(staging, name):
    entry = staging.entry(name)
    inside = subprocess.run(
        ["ip", "-n", entry["netns"], "-4", "-o", "addr", "show"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f" {entry['address']}/24 " in inside
    outside = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    assert f" {entry['address']}/" not in outside


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("name", HOST_NAMES)
def test_ipv6_address_is_on_the_bridge_link_only(staging, name):
    """fd52:a7e0:<n>::<10+k>/64 inside the host's netns, the bridge holds ::1, and there is no
    IPv6 route beyond that /64 (nothing outside the namespaces is reachable over it)."""
    entry = staging.entry(name)
    inside = _ip("-n", entry["netns"], "-6", "-o", "addr", "show", "dev", "eth0")
    assert f" {entry['address6']}/64 " in inside
    routes = _ip("-n", entry["netns"], "-6", "route", "show")
    assert "default" not in routes, routes
    bridge = _ip("-6", "-o", "addr", "show", "dev", staging.instance.bridge)
    assert f" {staging.instance.gateway6}/64 " in bridge
    assert f" {entry['address6']}/" not in _ip("-6", "-o", "addr", "show")
    # the ssh_config and known_hosts cover the IPv6 address too (strict host key checking)
    result = staging.ssh(entry["address6"], "hostname")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == name


def test_up_gives_running_hosts_their_ipv6_address_back(staging):
    """A host (and bridge) set up by a harness without IPv6 gets it on `up`, without a reboot."""
    name = staging.names[0]
    entry = staging.entry(name)
    boot = _boot_id(staging, name)
    _ip("-n", entry["netns"], "addr", "del", f"{entry['address6']}/64", "dev", "eth0")
    _ip("addr", "del", f"{staging.instance.gateway6}/64", "dev", staging.instance.bridge)
    rave_staging("up")
    assert f" {entry['address6']}/64 " in _ip("-n", entry["netns"], "-6", "-o", "addr")
    bridge = _ip("-6", "-o", "addr", "show", "dev", staging.instance.bridge)
    assert f" {staging.instance.gateway6}/64 " in bridge
    assert _boot_id(staging, name) == boot
    assert staging.ssh(entry["address6"], "true").returncode == 0


def test_operator_has_passwordless_sudo(host):
    assert host.run("id -u").stdout.strip() == "0"  # the host fixture runs commands via sudo
    assert host.user("agent").exists
    assert "rave-ssh" in host.user("agent").groups


def test_reboot_keeps_the_hosts_changes(staging, host):
    name = host.backend.get_hostname()
    marker = "/var/lib/rave-staging/reboot-test"
    host.run_expect([0], f"touch {marker}")
    boot = _boot_id(staging, name)
    staging.reboot(name)
    try:
        assert _boot_id(staging, name) != boot
        assert host.file(marker).exists  # the testinfra host reconnected after the reboot
        assert host.run("systemctl is-system-running").stdout.strip() in ("running", "degraded")
    finally:
        host.run(f"rm -f {marker}")
