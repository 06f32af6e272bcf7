"""files/ops/rave-validate-host against faked systemctl, ss and sshd output.

The expectations are the ones the deploy renders (tasks/ops.py validate_config); each check is
shown passing on a healthy host and failing on the fault it is there for.
"""

import json

import pytest

from rave.render import FILES
from tasks.ops import validate_config
from tests.unit.conftest import make_settings
from tests.unit.host_programs import load_host_program

SCRIPT = FILES / "ops" / "rave-validate-host"
CONFIG = json.loads(validate_config(make_settings()))
MB = 1024 * 1024


def load_script():
    return load_host_program(SCRIPT, "rave_validate_host")


class FakeHost:
    """What the script asks the host, answered from plain data a test can break."""

    def __init__(self) -> None:
        self.units: dict[str, dict[str, str]] = {}
        for name, unit in CONFIG["units"].items():
            props = {
                "LoadState": "loaded",
                "ActiveState": "active",
                "SubState": "running",
                "UnitFileState": "enabled",
                "MemoryCurrent": str(8 * MB),
                "MemoryMax": str(CONFIG["memory_max"].get(name, "infinity")),
                "Type": "simple",
                "TriggeredBy": "",
                "ControlGroup": f"/system.slice/{unit}",
            }
            if name == "backup":  # a oneshot its timer starts
                props.update(ActiveState="inactive", SubState="dead", UnitFileState="static")
                props.update(Type="oneshot", TriggeredBy="rave-backup.timer")
            self.units[unit] = props
        self.timers = {"rave-backup.timer": "active"}
        self.listeners = ["0.0.0.0:22", "[::]:22", "0.0.0.0:3002", "127.0.0.1:9090", "[::1]:5432"]
        self.sshd = dict(CONFIG["sshd"], port="22")

    def run(self, *command: str) -> str:
        if command[:2] == ("systemctl", "show"):
            props = self.units.get(command[-1], {"LoadState": "not-found"})
            return "".join(f"{key}={value}\n" for key, value in props.items())
        if command[:2] == ("systemctl", "is-active"):
            return self.timers.get(command[2], "inactive") + "\n"
        if command == ("ss", "-Hltn"):
            return "".join(f"LISTEN 0 128 {where} 0.0.0.0:*\n" for where in self.listeners)
        if command == ("sshd", "-T"):
            return "".join(f"{key} {value}\n" for key, value in self.sshd.items())
        raise AssertionError(f"unexpected command {command}")


@pytest.fixture
def fake(monkeypatch):
    script, host = load_script(), FakeHost()
    monkeypatch.setattr(script, "run", host.run)
    # the receiver's /healthz: draining, no dead letters (test_ops_validate_host_webhook.py
    # covers the failures)
    healthy = {"db": True, "spool_records": 0, "stalled_seconds": 0, "dead_letters": 0}
    monkeypatch.setattr(script, "fetch_health", lambda url: dict(healthy))
    return script, host


def failures(script) -> dict[tuple[str, str], str]:
    return {(stage, name): detail for stage, name, ok, detail in script.checks(CONFIG) if not ok}


def test_a_healthy_host_passes_every_check(fake):
    script, _ = fake
    results = script.checks(CONFIG)
    assert [r for r in results if not r[2]] == []
    names = {(stage, name) for stage, name, _, _ in results}
    assert {("services", name) for name in CONFIG["units"]} <= names
    assert {("resources", f"{name} memory") for name in CONFIG["memory_max"]} <= names
    assert ("ports", "only public ports on non-loopback") in names
    assert ("security", "sshd effective config") in names


def test_a_stopped_or_disabled_service_fails(fake):
    script, host = fake
    host.units["nginx.service"].update(ActiveState="inactive", SubState="dead")
    host.units["rave-webhook.service"]["UnitFileState"] = "disabled"
    assert set(failures(script)) == {("services", "nginx"), ("services", "webhook")}


def test_a_missing_unit_fails_unless_optional(fake):
    script, host = fake
    del host.units["grafana-server.service"]  # optional: not installed is fine
    assert failures(script) == {}
    del host.units["rave-webhook.service"]
    assert failures(script) == {("services", "webhook"): "rave-webhook.service missing"}


def test_a_scheduled_oneshot_is_judged_by_its_timer(fake):
    script, host = fake
    host.timers["rave-backup.timer"] = "inactive"
    assert set(failures(script)) == {("services", "backup")}
    host.timers["rave-backup.timer"] = "active"
    host.units["rave-backup.service"]["ActiveState"] = "failed"
    assert set(failures(script)) == {("services", "backup")}


def test_memory_limit_and_usage(fake, monkeypatch):
    script, host = fake
    host.units["rave-webhook.service"]["MemoryMax"] = str(384 * MB)  # FULL_PIPE's, not SAFE's
    host.units["nginx.service"]["MemoryCurrent"] = str(CONFIG["memory_max"]["nginx"])
    assert set(failures(script)) == {("resources", "webhook memory"), ("resources", "nginx memory")}
    # no memory accounting (a container): the processes' resident memory instead
    host.units["rave-webhook.service"]["MemoryMax"] = str(CONFIG["memory_max"]["webhook"])
    host.units["nginx.service"]["MemoryCurrent"] = "[not set]"
    monkeypatch.setattr(script, "cgroup_rss", lambda group: 5 * MB)
    assert failures(script) == {}
    monkeypatch.setattr(script, "cgroup_rss", lambda group: None)
    assert set(failures(script)) == {("resources", "nginx memory")}


def test_only_public_ports_beyond_loopback(fake):
    script, host = fake
    host.listeners += ["127.0.0.5:9999", "[::ffff:127.0.0.1]:9998", "[::1%lo]:9997"]
    assert failures(script) == {}
    host.listeners += ["0.0.0.0:9999", "[::]:9100"]
    assert failures(script) == {
        ("ports", "only public ports on non-loopback"): "unexpected ['0.0.0.0:9999', '[::]:9100']"
    }


def test_sshd_effective_settings(fake):
    script, host = fake
    host.sshd["passwordauthentication"] = "yes"
    assert failures(script) == {
        ("security", "sshd effective config"): "{'passwordauthentication': 'yes'}"
    }


def test_main_prints_writes_metrics_and_exits_by_the_result(fake, tmp_path, capsys):
    script, host = fake
    config = dict(CONFIG, textfile_dir=str(tmp_path))
    (tmp_path / "validate.json").write_text(json.dumps(config))
    script.CONFIG = str(tmp_path / "validate.json")
    assert script.main() == 0
    metrics = (tmp_path / "rave_validation.prom").read_text()
    assert "rave_validation_failed_checks 0\n" in metrics
    assert "checks passed" in capsys.readouterr().out
    host.units["nginx.service"]["ActiveState"] = "failed"
    assert script.main() == 1
    assert "rave_validation_failed_checks 1\n" in (tmp_path / "rave_validation.prom").read_text()
    out = capsys.readouterr().out
    assert "FAIL  services   nginx" in out
    assert out.rstrip().endswith("FAILED: services/nginx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rave_validation.prom", "validate.json"]
