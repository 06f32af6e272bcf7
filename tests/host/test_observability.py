"""Observability on a live staging host: targets, rules, dashboards, alerts, health check.

Every wait polls with a deadline (Prometheus scrapes and evaluates every scrape_interval); no
test sleeps a fixed time and hopes.
"""

from __future__ import annotations

import json
import math
import shlex
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from rave import observability as obs
from rave.components import Exposure, component, loopback_ports, monitoring_ports, scrape_targets
from rave.secrets.deploy import secret_path
from rave.settings import HostSettings
from tests.host.conftest import MONITORING, host_settings
from tests.host.secrets_rotation import rotate_and_deploy

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((REPO / "files" / "grafana" / "dashboards").glob("*.json"))
PROMETHEUS = "http://127.0.0.1:9090"


def api(host, path: str, **params: str) -> Any:
    """GET Prometheus's HTTP API from inside the host (it listens on 127.0.0.1 only)."""
    args = " ".join(f"--data-urlencode {shlex.quote(f'{k}={v}')}" for k, v in params.items())
    out = host.check_output(f"curl -fsS --max-time 10 --get {args} {PROMETHEUS}{path}")
    body = json.loads(out)
    assert body["status"] == "success", body
    return body["data"]


def query(host, expr: str) -> list[dict]:
    return api(host, "/api/v1/query", query=expr)["result"]


def poll(what: str, probe, timeout: float, interval: float = 3.0):
    """Call probe() until it returns a truthy value; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def scrape_seconds(settings: HostSettings) -> int:
    return int(settings.profile.scrape_interval.rstrip("s"))


def grafana_installed(host) -> bool:
    return host.package("grafana").is_installed


def test_all_targets_up(host):
    settings = host_settings(host)
    expected = {m.job for m in scrape_targets(obs.enabled_names(settings))}
    if not grafana_installed(host):
        expected.discard("grafana")

    def all_up():
        targets = api(host, "/api/v1/targets", state="active")["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in targets}
        return health if set(health) == expected and set(health.values()) == {"up"} else None

    poll(f"targets {sorted(expected)} all up", all_up, timeout=90)


def test_rules_are_loaded_and_check_clean_on_the_host(host):
    host.check_output("promtool check rules /etc/prometheus/rules/*.yml")
    host.check_output("promtool check config /etc/prometheus/prometheus.yml")
    loaded = {
        rule["name"]
        for group in api(host, "/api/v1/rules")["groups"]
        for rule in group["rules"]
        if rule["type"] == "alerting"
    }
    in_repo = {
        rule["alert"]
        for path in (REPO / "files" / "prometheus" / "rules").glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert in_repo and loaded == in_repo


def test_every_dashboard_query_returns_data(host):
    settings = host_settings(host)
    scrape = scrape_seconds(settings)
    # the health check's textfile exists (the deploy ran it once); wait until it is scraped
    assert host.file(f"{obs.TEXTFILE_DIR}/rave_healthcheck.prom").exists
    poll(
        "the health check's metrics in Prometheus",
        lambda: query(host, "rave_healthcheck_last_run_timestamp_seconds"),
        timeout=4 * scrape + 30,
    )
    pending = {
        (path.stem, title, obs.grafana_expr(expr, settings.profile.scrape_interval))
        for path in DASHBOARDS
        for title, expr in obs.dashboard_queries(json.loads(path.read_text()))
    }
    assert len(pending) > 30

    def finite(result: list[dict]) -> bool:
        return bool(result) and all(math.isfinite(float(r["value"][1])) for r in result)

    def round_() -> bool:
        # a little webhook traffic (refused: unsigned), so latency quantiles have samples
        for _ in range(3):
            host.run(
                "curl -s -o /dev/null --max-time 5 -X POST -d '{}' "
                f"http://127.0.0.1:{obs.port_of('webhook')}/webhook"
            )
        for item in sorted(pending):
            if finite(query(host, item[2])):
                pending.discard(item)
        return not pending

    deadline = time.monotonic() + 6 * scrape + 60
    while time.monotonic() < deadline and not round_():
        time.sleep(5)
    assert not pending, "panels without data:\n" + "\n".join(
        f"  {d} / {t}: {e}" for d, t, e in sorted(pending)
    )


def test_no_exporter_or_internal_port_reachable_from_outside(host, staging):
    name = host.check_output("hostname")
    address = staging.address(name)

    def answers(port: int) -> bool:
        with socket.socket() as probe:
            probe.settimeout(3)
            return probe.connect_ex((address, port)) == 0

    with ThreadPoolExecutor(max_workers=len(loopback_ports())) as pool:
        reachable = [
            p
            for p, ok in zip(loopback_ports(), pool.map(answers, loopback_ports()), strict=True)
            if ok
        ]
    assert reachable == [], f"{address}: ports {reachable} answer from outside"
    # and not only because of the firewall: bound to loopback (the exporters listen on every
    # address when a monitoring host scrapes them: tests/host/test_multihost.py)
    listening = host.check_output("ss -ltnH")
    for line in listening.splitlines():
        local = line.split()[3]
        port = int(local.rsplit(":", 1)[1])
        if MONITORING and port in monitoring_ports():
            continue
        if port in loopback_ports():
            assert local.startswith(("127.0.0.1:", "[::1]:")), line


def test_sshd_still_public(host, staging):
    """The reachability probe above can succeed: a public port does answer."""
    address = staging.address(host.check_output("hostname"))
    public = next(p.number for p in component("sshd").ports if p.exposure is Exposure.PUBLIC)
    with socket.create_connection((address, public), timeout=5):
        pass


def test_memory_caps_follow_the_mode(host):
    settings = host_settings(host)
    for name in ("prometheus", "alertmanager", "node_exporter"):
        unit = obs.component(name).unit
        expected = settings.profile.limits_for(name).memory_max_mb * 1024 * 1024
        shown = host.check_output(f"systemctl show -p MemoryMax --value {unit}")
        assert shown == str(expected), (unit, shown)
    grafana_mb = settings.profile.limits_for("grafana").memory_max_mb
    if grafana_installed(host):
        shown = host.check_output("systemctl show -p MemoryMax --value grafana-server")
        assert shown == str(grafana_mb * 1024 * 1024)
    else:
        dropin = host.file("/etc/systemd/system/grafana-server.service.d/rave.conf")
        assert f"MemoryMax={grafana_mb}M" in dropin.content_string


def test_services_are_sandboxed(host):
    for name in obs.OBSERVABILITY_COMPONENTS:
        unit = obs.component(name).unit
        props = host.check_output(
            f"systemctl show -p ProtectSystem -p NoNewPrivileges -p ActiveState {unit}"
        )
        assert "ProtectSystem=strict" in props, (unit, props)
        assert "NoNewPrivileges=yes" in props, (unit, props)
        assert "ActiveState=active" in props, (unit, props)


def test_a_failed_unit_fires_its_alert(host):
    settings = host_settings(host)
    unit = f"rave-alert-probe-{uuid.uuid4().hex[:8]}.service"
    host.check_output(f"systemd-run --unit={unit} --quiet /bin/false")
    try:
        poll(
            f"{unit} failed", lambda: host.run(f"systemctl is-failed --quiet {unit}").rc == 0, 30, 1
        )

        def firing():
            alerts = api(host, "/api/v1/alerts")["alerts"]
            return [
                a
                for a in alerts
                if a["labels"].get("alertname") == "SystemdUnitFailed"
                and a["labels"].get("name") == unit
                and a["state"] == "firing"
            ]

        # for: 1m, plus a scrape and an evaluation before it is pending and one after
        poll(
            f"SystemdUnitFailed firing for {unit}",
            firing,
            timeout=60 + 4 * scrape_seconds(settings) + 30,
        )
    finally:
        host.run(f"systemctl reset-failed {unit}")


def test_alertmanager_runs_with_the_built_config(host):
    status = json.loads(
        host.check_output("curl -fsS --max-time 10 http://127.0.0.1:9093/api/v2/status")
    )
    config = yaml.safe_load(status["config"]["original"])
    assert config["route"]["receiver"] == "null"  # staging is silenced
    managers = api(host, "/api/v1/alertmanagers")["activeAlertmanagers"]
    assert [m["url"] for m in managers] == ["http://127.0.0.1:9093/api/v2/alerts"]
    assert host.file(obs.ALERTMANAGER_RUNTIME_CONFIG).mode == 0o600


def test_postgres_exporter_password_stays_off_command_lines(host):
    assert poll("pg_up == 1", lambda: query(host, "pg_up == 1"), timeout=60)
    secret = secret_path("postgres_exporter", "postgres_exporter_password")
    password = host.check_output(f"cat {secret}").strip()
    assert password
    pid = host.check_output("systemctl show -p MainPID --value prometheus-postgres-exporter")
    assert password not in host.check_output("ps -eo args")
    assert password not in host.check_output(f"tr '\\0' '\\n' < /proc/{pid}/environ")


def test_healthcheck_timer_and_operator_command(host):
    timer = host.service("rave-healthcheck.timer")
    assert timer.is_enabled and timer.is_running
    result = host.run(obs.HEALTHCHECK_COMMAND + " --no-metrics")
    assert result.rc in (0, 2), result.stderr
    assert "checks passed" in result.stderr
    for unit in ("prometheus.service", "prometheus-node-exporter.service"):
        assert f"OK    unit         {unit}" in result.stdout
    prom = host.file(f"{obs.TEXTFILE_DIR}/rave_healthcheck.prom")
    assert prom.mode == 0o644 and "rave_healthcheck_check_ok{" in prom.content_string


def test_healthcheck_logs_failures_to_the_journal(host):
    """Run the check with a config that must fail (a disk needing 100% free) as a unit."""
    probe = f"rave-hc-probe-{uuid.uuid4().hex[:8]}"
    config = {"textfile_dir": "/nonexistent", "disks": [{"path": "/", "min_free_percent": 100}]}
    path = f"/run/{probe}.json"
    host.check_output(f"echo {shlex.quote(json.dumps(config))} > {path}")
    try:
        result = host.run(
            f"systemd-run --wait --quiet --unit={probe} "
            f"{obs.HEALTHCHECK_COMMAND} --no-metrics --config {path}"
        )
        assert result.rc != 0  # exit 2: a check failed
        journal = host.check_output(f"journalctl -u {probe} -p err --no-pager -o cat")
        assert "FAIL  disk" in journal
    finally:
        host.run(f"rm -f {path}; systemctl reset-failed {probe}")


def test_grafana_provisioning_files(host):
    datasource = yaml.safe_load(
        host.file("/etc/grafana/provisioning/datasources/rave.yaml").content_string
    )
    assert datasource["datasources"][0]["url"] == "http://127.0.0.1:9090"
    for path in DASHBOARDS:
        remote = host.file(f"{obs.GRAFANA_DASHBOARD_DIR}/{path.name}")
        assert json.loads(remote.content_string) == json.loads(path.read_text())
    ini = host.file("/etc/grafana/grafana.ini").content_string
    assert "http_addr = 127.0.0.1" in ini and "$__file{" in ini


def test_postgres_exporter_follows_a_password_rotation(host, staging):
    """Rotate its secret and deploy: the exporter is restarted and logs in with the new one."""
    old, new, result = rotate_and_deploy(staging, "postgres_exporter_password")
    assert old != new
    restarts = [
        op for op in result.changed_operations() if "Restart prometheus-postgres-exporter" in op
    ]
    assert restarts, result.changed_operations()

    def logged_in() -> bool:
        metrics = host.run("curl -fsS --max-time 10 http://127.0.0.1:9187/metrics").stdout
        return "\npg_up 1\n" in metrics

    poll("the postgres exporter logged in with the rotated password", logged_in, timeout=60)
