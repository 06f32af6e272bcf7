"""Observability with a monitoring host: exporters reachable by it, one central scraper."""

import json

import yaml

from rave import observability as obs
from tests.unit.conftest import make_settings

SERVICE = {"host_address": "10.0.0.1", "monitoring_addresses": ["10.0.0.9"]}
MONITOR = {
    "monitoring_role": True,
    "host_address": "10.0.0.9",
    "monitoring_scrape_hosts": {"svc-1": "10.0.0.1", "svc-2": "10.0.0.2"},
}


def _jobs(settings) -> dict[str, list[dict]]:
    config = yaml.safe_load(obs.prometheus_config(settings))
    return {job["job_name"]: job["static_configs"] for job in config["scrape_configs"]}


def test_a_single_host_keeps_everything_on_loopback():
    settings = make_settings()
    assert "--web.listen-address=127.0.0.1:9100" in obs.node_exporter_args(settings)
    targets = [t for static in _jobs(settings).values() for s in static for t in s["targets"]]
    assert all(t.startswith("127.0.0.1:") for t in targets), targets


def test_a_service_host_opens_its_exporters_when_the_inventory_has_a_monitoring_host():
    settings = make_settings(**SERVICE)
    # every address; the firewall (rave/hardening.py) admits only the monitoring host
    assert "--web.listen-address=0.0.0.0:9100" in obs.node_exporter_args(settings)
    assert "-web.listen-address=0.0.0.0:9113" in obs.nginx_exporter_args(settings)
    assert obs.postgres_exporter_environment(settings)["ARGS"].endswith("0.0.0.0:9187")
    assert "127.0.0.1:9090" in obs.prometheus_args(settings)  # Prometheus stays local


def test_the_monitoring_host_scrapes_every_service_hosts_exporters():
    settings = make_settings(**MONITOR)
    jobs = _jobs(settings)
    for job, port in (("node", 9100), ("postgres", 9187), ("nginx", 9113)):
        remote = {s["labels"]["instance"]: s["targets"] for s in jobs[job]}
        assert remote["svc-1"] == [f"10.0.0.1:{port}"]
        assert remote["svc-2"] == [f"10.0.0.2:{port}"]
    assert "webhook" not in jobs  # loopback-only metrics stay with each host's own Prometheus
    assert set(obs.host_components(settings)) == {"prometheus", "alertmanager", "node_exporter"}
    # nobody scrapes the monitoring host from outside: its exporter stays on loopback
    assert "--web.listen-address=127.0.0.1:9100" in obs.node_exporter_args(settings)


def test_the_monitoring_health_check_watches_only_what_runs_there():
    units = json.loads(obs.healthcheck_config(make_settings(**MONITOR)))["units"]
    assert "prometheus.service" in units
    assert not any(u.startswith(("nginx", "postgresql", "rave-webhook")) for u in units), units
