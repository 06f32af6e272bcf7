"""Security updates on a live staging host: sources, lists, needrestart, metrics, validation."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from rave import observability as obs
from tasks import base
from tasks.hardening import NEEDRESTART_CONF

REPO = Path(__file__).resolve().parents[2]
LISTS = "/var/lib/apt/lists"
SECURITY_RELEASE = f"{LISTS}/*_dists_bookworm-security_InRelease"
METRICS = "curl -fsS --max-time 10 http://127.0.0.1:9100/metrics"


def _metric(host, name: str) -> float | None:
    for line in host.run(METRICS).stdout.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def _collect(host) -> None:
    result = host.run("systemctl start rave-update-metrics.service")
    assert result.rc == 0, result.stderr


def _validate(name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rave.ops.cli", "--limit", name, "validate"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_debian_sources_have_main_updates_and_security(host):
    sources = host.file(base.DEBIAN_SOURCES)
    assert sources.user == "root" and sources.mode == 0o644
    text = sources.content_string
    assert "Suites: bookworm bookworm-updates\n" in text
    assert "URIs: https://security.debian.org/debian-security\n" in text
    assert "Suites: bookworm-security\n" in text
    assert text.count(f"Signed-By: {base.ARCHIVE_KEYRING}\n") == 2
    leftover = host.run("grep -hvE '^[[:space:]]*(#|$)' /etc/apt/sources.list").stdout
    assert leftover == "", "sources.list must hold no sources"
    debian = host.run(r"grep -rlE '(deb|security)\.debian\.org' /etc/apt/sources.list.d").stdout
    assert debian.split() == [base.DEBIAN_SOURCES], "one file holds the Debian sources"


def test_apt_fetched_the_security_suite(host):
    found = host.run(f"ls {SECURITY_RELEASE}")
    assert found.rc == 0, f"no bookworm-security lists: {found.stderr}"
    policy = host.run("apt-cache policy").stdout
    assert "bookworm-security/main" in policy
    assert "bookworm-updates/main" in policy


def test_needrestart_restarts_automatically(host):
    assert host.package("needrestart").is_installed
    assert "$nrconf{restart} = 'a';" in host.file(NEEDRESTART_CONF).content_string
    batch = host.run("needrestart -b -r l")
    assert batch.rc == 0 and "NEEDRESTART-VER:" in batch.stdout, batch.stderr
    # unattended-upgrades runs dpkg through apt: needrestart's apt hook is there
    assert host.file("/etc/apt/apt.conf.d/99needrestart").exists


def test_update_metrics_reach_the_node_exporter(host):
    assert host.service("rave-update-metrics.timer").is_enabled
    assert host.service("rave-update-metrics.timer").is_running
    assert host.file(f"{obs.TEXTFILE_DIR}/rave_updates.prom").exists
    assert _metric(host, "rave_reboot_required") is not None
    assert _metric(host, "rave_restart_pending") is not None
    assert _metric(host, "rave_update_metrics_ok") == 1


def test_reboot_required_flips_the_metric(host):
    had = host.file("/run/reboot-required").exists
    assert _metric(host, "rave_reboot_required") is not None, "no metric to flip"
    try:
        host.run("touch /run/reboot-required")
        _collect(host)
        assert _metric(host, "rave_reboot_required") == 1
    finally:
        if not had:
            host.run("rm -f /run/reboot-required")
            _collect(host)
    if not had:
        assert _metric(host, "rave_reboot_required") == 0


def test_validation_fails_on_stale_security_lists_and_recovers(host, staging):
    name = staging.names[0]
    assert host.run(f"ls {SECURITY_RELEASE}").rc == 0, "no security lists to age"
    assert host.run(f"touch -c -d '10 days ago' {SECURITY_RELEASE}").rc == 0
    try:
        stale = _validate(name)
        assert stale.returncode != 0, stale.stdout
        failing = [
            line
            for line in (stale.stdout + stale.stderr).splitlines()
            if "security updates lists" in line
        ]
        assert failing and "FAIL" in failing[0], stale.stdout
        assert "days old" in failing[0]
        host_side = host.run("/usr/local/sbin/rave-validate-host")
        assert host_side.rc == 1, host_side.stdout
        assert any(
            line.startswith("FAIL") and "security updates lists" in line
            for line in host_side.stdout.splitlines()
        ), host_side.stdout
    finally:
        # apt fetches the InRelease again (If-Modified-Since is ten days back) but keeps the
        # file it has when the content is the same, with its backdated time: drop it first, so
        # that apt stores the fetched one dated by the archive's Last-Modified
        host.run(f"rm -f {SECURITY_RELEASE}")
        refreshed = host.run("apt-get update -q")
        assert refreshed.rc == 0, refreshed.stderr
        assert host.run(f"ls {SECURITY_RELEASE}").rc == 0, refreshed.stdout
    time.sleep(1)
    fresh = _validate(name)
    lines = [
        line
        for line in (fresh.stdout + fresh.stderr).splitlines()
        if "security updates lists" in line
    ]
    assert lines and "FAIL" not in lines[0], fresh.stdout


def test_restart_pending_counts_a_service_on_a_replaced_library(host):
    # a service that mapped a library which is then deleted, as an upgrade replaces it
    lib = "/usr/lib/x86_64-linux-gnu/librave-nrtest.so.1"
    loader = f"import ctypes, time; ctypes.CDLL('{lib}'); time.sleep(600)"
    # services needrestart never restarts itself (dbus, systemd-logind) may already be pending
    # after a deploy that took security updates
    _collect(host)
    before = _metric(host, "rave_restart_pending")
    assert before is not None
    assert host.run(f"cp /usr/lib/x86_64-linux-gnu/libz.so.1 {lib}").rc == 0
    try:
        started = host.run(f'systemd-run --unit rave-nrtest python3 -c "{loader}"')
        assert started.rc == 0, started.stderr
        time.sleep(2)
        host.run(f"rm -f {lib}")
        assert "NEEDRESTART-SVC: rave-nrtest.service" in host.run("needrestart -b -r l").stdout
        _collect(host)
        assert _metric(host, "rave_restart_pending") == before + 1
    finally:
        host.run("systemctl stop rave-nrtest.service")
        host.run(f"rm -f {lib}")
    _collect(host)
    assert _metric(host, "rave_restart_pending") == before
