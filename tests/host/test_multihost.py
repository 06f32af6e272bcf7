"""Service hosts plus a monitoring host (`make test-multihost`: 2 service + 1 monitoring).

Run on its own instance (`make test` runs it after the single-host suites, which ignore this
file); without the topology it fails rather than skips, so a run that misses it is noticed.

The monitoring host's address is typed nowhere: the inventory's `monitoring` group
(inventories/staging.py with RAVE_STAGING_MONITORING=1) is the only source; rave/topology.py
derives the service hosts' firewall sources and the monitoring host's scrape targets from it.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from rave.components import COMPONENTS, Exposure
from tests.host.conftest import HOST_NAMES, MONITORING, MONITORING_NAMES

pytestmark = pytest.mark.multihost


@pytest.fixture(scope="session", autouse=True)
def topology() -> None:
    """Fail, never skip, without the topology: a suite skipped on every run proves nothing.
    (Session scope and autouse: it runs before `staging` boots anything.)"""
    if not MONITORING or len(HOST_NAMES) < 2:
        pytest.fail(
            "needs 2 service hosts and a monitoring host: `make test-multihost` "
            "(RAVE_STAGING_HOSTS=3 RAVE_STAGING_MONITORING=1 on an instance of its own)",
            pytrace=False,
        )


# the exporters a monitoring host scrapes: components whose metrics port is MONITORING-exposed
MONITORING_JOBS = {
    c.metrics.job: c.metrics.port
    for c in COMPONENTS
    if c.metrics is not None
    and any(p.number == c.metrics.port and p.exposure is Exposure.MONITORING for p in c.ports)
}


def probe(staging, from_name: str, address: str, port: int) -> bool:
    """Whether a TCP connection from a staging host to address:port succeeds (3 s)."""
    result = staging.ssh(
        from_name, f"timeout 3 bash -c 'exec 3<>/dev/tcp/{address}/{port}' && echo open"
    )
    return result.stdout.strip() == "open"


@pytest.fixture(scope="module")
def monitor(staging):
    return staging.testinfra_host(MONITORING_NAMES[0])


def test_the_jobs_under_test_exist():
    assert set(MONITORING_JOBS) >= {"node", "postgres", "nginx"}, MONITORING_JOBS


def test_monitoring_prometheus_has_every_service_hosts_exporters_up(staging, monitor):
    expected = {(name, job) for name in HOST_NAMES for job in MONITORING_JOBS}
    deadline = time.monotonic() + 120
    while True:
        body = json.loads(
            monitor.check_output(
                "curl -fsS --max-time 10 'http://127.0.0.1:9090/api/v1/targets?state=active'"
            )
        )
        seen = {
            (t["labels"].get("instance"), t["labels"]["job"]): t
            for t in body["data"]["activeTargets"]
        }
        missing = {
            k: (seen[k]["health"], seen[k]["lastError"]) if k in seen else "absent"
            for k in expected
            if k not in seen or seen[k]["health"] != "up"
        }
        if not missing:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"targets not up on the monitoring host after 120 s: {missing}")
        time.sleep(3)
    # scraped over the service hosts' addresses, not loopback
    for name in HOST_NAMES:
        for job, port in MONITORING_JOBS.items():
            url = seen[(name, job)]["scrapeUrl"]
            assert f"//{staging.address(name)}:{port}/" in url, url


def test_the_monitoring_host_reaches_each_exporter(staging):
    """The positive control for the refusals below: the probe does succeed from the monitor."""
    for name in HOST_NAMES:
        for port in MONITORING_JOBS.values():
            assert probe(staging, MONITORING_NAMES[0], staging.address(name), port), (name, port)


def test_another_service_host_cannot_reach_an_exporter(staging):
    assert len(HOST_NAMES) >= 2
    source, target = HOST_NAMES[1], HOST_NAMES[0]
    for port in MONITORING_JOBS.values():
        assert not probe(staging, source, staging.address(target), port), (
            f"{source} reaches {target}:{port}"
        )


def test_the_control_machine_cannot_reach_an_exporter(staging):
    """The bridge address (10.213.<n>.1) is not the monitoring host's."""
    for name in HOST_NAMES:
        for port in MONITORING_JOBS.values():
            with socket.socket() as sock:
                sock.settimeout(2)
                assert sock.connect_ex((staging.address(name), port)) != 0, (name, port)


def test_the_monitoring_host_runs_no_service(monitor):
    for unit in ("rave-webhook", "nginx", "postgresql"):
        assert not monitor.service(unit).is_running, unit
    assert monitor.service("prometheus").is_running


def test_the_monitoring_host_backs_up_its_own_files_without_a_database(monitor):
    """Its backup runs (tasks/backup.py): no dumps, no WAL archiving, PostgreSQL untouched."""
    config = json.loads(monitor.check_output("cat /etc/rave/backup.json"))
    assert config["databases"] is False and config["wal_archiving"] is False
    assert not monitor.file("/etc/postgresql").exists
    assert monitor.service("rave-backup.timer").is_running
    result = monitor.run("systemctl start rave-backup.service")
    journal = monitor.run("journalctl -u rave-backup.service -n 30 --no-pager -o cat").stdout
    assert result.rc == 0, f"rave-backup.service failed:\n{result.stderr}\n{journal}"
    snapshot = json.loads(monitor.check_output("cat /var/lib/rave-backup/state.json"))
    assert snapshot["last_exit_code"] == 0
    listing = monitor.check_output(
        "/usr/local/sbin/rave-backup ls --snapshot %s", snapshot["last_snapshot"]
    ).splitlines()
    assert "/etc/ssh/ssh_host_ed25519_key" in listing
    assert "/etc/prometheus/prometheus.yml" in listing
    dumps = [p for p in listing if p.startswith("/var/lib/rave-backup/dump/")]
    assert not [p for p in dumps if p.endswith((".dump", "manifest.json", "globals.sql"))], dumps
