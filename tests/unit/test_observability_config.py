"""Generated observability configuration: derived from components and the mode, loopback only,
no secret in any file, and accepted by promtool."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from rave import observability as obs
from rave.components import COMPONENTS, scrape_targets
from rave.render import render
from tasks import observability as task
from tests.tools import require_tool
from tests.unit.conftest import make_settings

ROOT = Path(__file__).resolve().parents[2]


def _prometheus(config) -> dict:
    return yaml.safe_load(obs.prometheus_config(config))


def test_scrape_targets_are_derived_from_components():
    config = make_settings(grafana_install=True)
    jobs = {job["job_name"]: job for job in _prometheus(config)["scrape_configs"]}
    assert set(jobs) == {m.job for m in scrape_targets()}
    for metrics in scrape_targets():
        (static,) = jobs[metrics.job]["static_configs"]
        assert static["targets"] == [f"127.0.0.1:{metrics.port}"]
        assert jobs[metrics.job]["metrics_path"] == metrics.path


def test_grafana_is_not_scraped_when_not_installed():
    jobs = {
        j["job_name"] for j in _prometheus(make_settings(grafana_install=False))["scrape_configs"]
    }
    assert "grafana" not in jobs
    assert {"node", "prometheus", "alertmanager", "postgres", "nginx", "webhook"} <= jobs


@pytest.mark.parametrize(
    ("mode", "retention", "interval", "memory", "grafana_memory"),
    # the seed's figures (P6 summary, "Resource Management Modes")
    [("SAFE", "3d", "30s", 256, 128), ("FULL_PIPE", "7d", "15s", 512, 256)],
)
def test_prometheus_follows_the_mode(mode, retention, interval, memory, grafana_memory):
    config = make_settings(rave_mode=mode)
    assert f"--storage.tsdb.retention.time={retention}" in obs.prometheus_args(config)
    assert f"--storage.tsdb.retention.size={config.profile.prometheus_retention_size}" in (
        obs.prometheus_args(config)
    )
    assert _prometheus(config)["global"]["scrape_interval"] == interval
    assert f"MemoryMax={memory}M" in task.sandbox_dropin("prometheus", config)
    assert config.profile.limits_for("grafana").memory_max_mb == grafana_memory
    assert f"MemoryMax={grafana_memory}M" in task.sandbox_dropin("grafana", config)


def test_every_listener_is_on_loopback():
    config = make_settings()
    args = {
        "prometheus": obs.prometheus_args(config),
        "alertmanager": obs.alertmanager_args(config),
        "node_exporter": obs.node_exporter_args(config),
        "nginx_exporter": obs.nginx_exporter_args(config),
        "postgres_exporter": obs.postgres_exporter_environment(config)["ARGS"],
    }
    for name, text in args.items():
        listen = re.findall(r"-web\.listen-address=(\S+)", text)
        assert listen == [f"127.0.0.1:{obs.port_of(name)}"], name
    assert "--cluster.listen-address= " in obs.alertmanager_args(config) + " "
    assert "http_addr = 127.0.0.1" in render(
        "grafana/grafana.ini.j2", **task.grafana_ini_context(config)
    )


def test_postgres_exporter_reads_its_password_from_the_secret_file():
    env = obs.postgres_exporter_environment(make_settings())
    assert env["DATA_SOURCE_PASS_FILE"] == (
        "/run/rave/secrets/postgres_exporter/postgres_exporter_password"
    )
    assert "DATA_SOURCE_PASS" not in env
    assert "@" not in env["DATA_SOURCE_URI"] and env["DATA_SOURCE_NAME"] == ""
    assert "Requires=rave-secrets.service" in task.deps_dropin("postgres_exporter")


def test_nginx_exporter_scrapes_the_loopback_stub_status():
    scrape = "-nginx.scrape-uri=http://127.0.0.1:8081/stub_status"
    assert scrape in obs.nginx_exporter_args(make_settings())


def test_monitoring_ports_open_up_only_for_named_monitoring_sources():
    config = make_settings(firewall_monitoring_sources=["192.0.2.10/32"])
    assert "--web.listen-address=0.0.0.0:9100" in obs.node_exporter_args(config)
    assert "-web.listen-address=0.0.0.0:9113" in obs.nginx_exporter_args(config)
    # loopback components stay on loopback
    assert "--web.listen-address=127.0.0.1:9090" in obs.prometheus_args(config)
    assert "--web.listen-address=127.0.0.1:9093" in obs.alertmanager_args(config)


def test_promtool_accepts_the_generated_config_with_the_rules(tmp_path):
    promtool = require_tool("promtool")
    for mode in ("SAFE", "FULL_PIPE"):
        (tmp_path / "prometheus.yml").write_text(
            obs.prometheus_config(make_settings(rave_mode=mode))
        )
        shutil.copytree(
            ROOT / "files" / "prometheus" / "rules", tmp_path / "rules", dirs_exist_ok=True
        )
        result = subprocess.run(
            [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        rule_files = len(list((ROOT / "files" / "prometheus" / "rules").glob("*.yml")))
        assert f"SUCCESS: {rule_files} rule files found" in result.stdout + result.stderr


def test_the_install_script_checks_before_installing():
    script = task.prometheus_install_script()
    check = script.index("promtool check config")
    assert check < script.index("install -m 644")
    assert "else rm -rf /etc/prometheus/rave-candidate; exit 1" in script


def test_sandbox_dropins_confine_every_observability_service():
    config = make_settings()
    for name in task.SANDBOXES:
        text = task.sandbox_dropin(name, config)
        assert "ProtectSystem=strict" in text and "NoNewPrivileges=yes" in text
        assert f"MemoryMax={config.profile.limits_for(name).memory_max_mb}M" in text


def test_alertmanager_routes_every_receiver_name_and_staging_is_silent():
    silent = json.loads(
        obs.alertmanager_base_config(
            make_settings(
                alertmanager_silenced=True,
                alertmanager_routes=[{"receiver": "pager", "matchers": ['severity="critical"']}],
            )
        )
    )
    assert silent["route"]["receiver"] == "null"
    assert [r["receiver"] for r in silent["route"]["routes"]] == ["null"]
    assert silent["receivers"] == [{"name": "null"}]
    default = json.loads(obs.alertmanager_base_config(make_settings()))
    assert default["route"]["receiver"] == "default"
    assert default["global"]["smtp_from"] == "alertmanager@rave-test-1"
    routed = json.loads(
        obs.alertmanager_base_config(
            make_settings(
                alertmanager_default_receiver="ops-email",
                alertmanager_routes=[{"receiver": "pager", "matchers": ['severity="critical"']}],
            )
        )
    )
    assert {r["name"] for r in routed["receivers"]} == {"ops-email", "pager", "null"}
    assert routed["route"]["routes"][1] == {
        "receiver": "pager",
        "matchers": ['severity="critical"'],
    }


def test_healthcheck_covers_every_enabled_service_and_port():
    config = make_settings(grafana_install=False)
    check = json.loads(obs.healthcheck_config(config))
    enabled = [c for c in COMPONENTS if not c.optional or c.name == "ccr"]  # ccr_install default
    assert {obs.unit_name(c) for c in enabled} <= set(check["units"])
    assert "grafana-server.service" not in check["units"]
    without_ccr = json.loads(obs.healthcheck_config(make_settings(ccr_install=False)))
    assert "rave-ccr.service" in check["units"] and "rave-ccr.service" not in without_ccr["units"]
    assert {(p["component"], p["port"]) for p in check["ports"]} == {
        (c.name, p.number) for c in enabled for p in c.ports
    }
    assert check["backup"]["metric"] == "rave_backup_last_success_timestamp_seconds"
    assert check["certificates"][0]["path"] == "/run/rave/secrets/nginx/tls_certificate"
    assert check["textfile_dir"] == obs.TEXTFILE_DIR


def test_grafana_ini_has_no_secret_and_no_anonymous_access():
    config = make_settings()
    text = render("grafana/grafana.ini.j2", **task.grafana_ini_context(config))
    assert "admin_password = $__file{/run/rave/secrets/grafana/grafana_admin_password}" in text
    assert re.search(r"\[auth\.anonymous\]\nenabled = false", text)
    assert "root_url = https://rave-test-1:3002/grafana/" in text


def test_grafana_key_is_pinned():
    config = make_settings(egress_proxy="http://10.0.0.1:3128")
    script = task.grafana_key_script(config)
    assert config.grafana_apt_key_fingerprint in script
    assert "--proxy http://10.0.0.1:3128" in script
    assert "exit 1" in script
    line = render(
        "grafana/grafana.list.j2", keyring=task.GRAFANA_KEYRING, source=config.grafana_apt_source
    )
    assert (
        "deb [signed-by=/usr/share/keyrings/grafana.gpg] https://apt.grafana.com stable main"
        in line
    )


def test_grafana_provisioning_is_valid():
    (datasource,) = yaml.safe_load(obs.grafana_datasources())["datasources"]
    assert datasource["uid"] == obs.GRAFANA_DATASOURCE_UID
    assert datasource["url"] == "http://127.0.0.1:9090"
    (provider,) = yaml.safe_load(obs.grafana_dashboard_provider())["providers"]
    assert provider["options"]["path"] == obs.GRAFANA_DASHBOARD_DIR


def _gpg_key(tmp_path, name: str) -> tuple[str, Path]:
    home = tmp_path / f"gnupg-{name}"
    home.mkdir(mode=0o700)
    env = {"GNUPGHOME": str(home), "PATH": "/usr/bin:/bin"}
    subprocess.run(
        [
            "gpg",
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            f"{name} <{name}@example.org>",
            "ed25519",
            "sign",
            "1d",
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    listing = subprocess.run(
        ["gpg", "--batch", "--with-colons", "--list-keys"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    fingerprint = next(
        line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr")
    )
    armored = tmp_path / f"{name}.asc"
    exported = subprocess.run(
        ["gpg", "--batch", "--armor", "--export"], check=True, capture_output=True, env=env
    ).stdout
    armored.write_bytes(exported)
    subprocess.run(["gpgconf", "--kill", "all"], check=False, env=env)  # no agent left behind
    return fingerprint, armored


def test_grafana_key_script_installs_only_the_pinned_key(tmp_path):
    """The script itself, with a local key (file:// instead of Grafana's URL)."""
    require_tool("gpg")
    require_tool("curl")
    good, good_key = _gpg_key(tmp_path, "pinned")
    _, other_key = _gpg_key(tmp_path, "other")
    keyring = tmp_path / "grafana.gpg"
    config = make_settings(grafana_apt_key_fingerprint=good)
    for key, ok in ((other_key, False), (good_key, True)):
        script = task.grafana_key_script(
            config.model_copy(update={"grafana_apt_key_url": f"file://{key}"}), str(keyring)
        )
        result = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
        assert (result.returncode == 0) is ok, result.stderr
        assert keyring.exists() is ok
    assert keyring.read_bytes()[:1] != b"-"  # dearmored for apt's signed-by


def test_backup_age_limit_follows_the_schedule():
    assert obs.backup_max_age_seconds(make_settings(healthcheck_backup_max_age_hours=5)) == 5 * 3600
    config = make_settings()
    expected = 3 * 3600 if getattr(config, "backup_schedule", None) == "hourly" else 49 * 3600
    assert obs.backup_max_age_seconds(config) == expected
