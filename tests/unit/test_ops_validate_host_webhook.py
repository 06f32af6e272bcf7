"""files/ops/rave-validate-host: the webhook checks (stalled spool, dead letters), with fakes."""

import json
from pathlib import Path

import pytest

from rave.ops.validate import SPOOL_STALLED_MAX_SECONDS
from tests.unit.conftest import make_settings
from tests.unit.host_programs import load_host_program

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "files" / "ops" / "rave-validate-host"


vh = load_host_program(SCRIPT, "rave_validate_host")

SSHD = {"permitrootlogin": "no"}


@pytest.fixture
def host(monkeypatch, tmp_path, healthz):
    """Every unit active and enabled, sshd as expected, only port 22 public; /healthz fake."""
    url, answer = healthz

    def unit_props(unit):
        return {
            "LoadState": "loaded",
            "ActiveState": "active",
            "SubState": "running",
            "UnitFileState": "enabled",
            "Type": "simple",
        }

    def run(*command):
        if command[0] == "ss":
            return "LISTEN 0 128 0.0.0.0:22 0.0.0.0:*\n"
        if command[0] == "sshd":
            return "permitrootlogin no\n"
        return ""

    monkeypatch.setattr(vh, "unit_props", unit_props)
    monkeypatch.setattr(vh, "run", run)
    config = {
        "units": {"webhook": "rave-webhook.service", "nginx": "nginx.service"},
        "optional": [],
        "memory_max": {},
        "public_ports": [22],
        "sshd": SSHD,
        "textfile_dir": str(tmp_path),
        "webhook": {"url": url, "stalled_max_seconds": SPOOL_STALLED_MAX_SECONDS},
    }
    return config, answer


def failed(config):
    return {f"{stage}/{name}": detail for stage, name, ok, detail in vh.checks(config) if not ok}


def test_a_healthy_host_passes_with_the_webhook_queue_checked(host):
    config, _ = host
    results = vh.checks(config)
    names = [name for _, name, _, _ in results]
    assert "webhook spool draining" in names and "webhook dead letters" in names
    assert all(ok for _, _, ok, _ in results)


def test_a_stalled_spool_fails_naming_the_cause(host):
    config, answer = host
    answer["body"].update(stalled_seconds=300, spool_records=1234)
    assert failed(config) == {
        "application/webhook spool draining": "stalled 300 s with 1234 records",
    }


def test_waiting_dead_letters_fail_naming_the_command(host):
    config, answer = host
    answer["body"].update(dead_letters=2)
    assert failed(config) == {
        "application/webhook dead letters": "2 waiting (rave-ops dead-letters list)",
    }
    answer["body"].update(dead_letters=0, dead_letter_store_full=True)
    assert "store FULL" in failed(config)["application/webhook dead letters"]


def test_a_silent_receiver_fails(host):
    config, answer = host
    answer["body"] = None
    assert list(failed(config)) == ["application/webhook health"]


def test_main_exits_1_and_names_the_failure(host, monkeypatch, tmp_path, capsys):
    config, answer = host
    answer["body"].update(dead_letters=1)
    path = tmp_path / "validate.json"
    path.write_text(json.dumps(config))
    monkeypatch.setattr(vh, "CONFIG", str(path))
    assert vh.main() == 1
    out = capsys.readouterr().out
    assert "FAILED: application/webhook dead letters" in out
    assert "rave_validation_failed_checks 1" in (tmp_path / "rave_validation.prom").read_text()
    answer["body"].update(dead_letters=0)
    assert vh.main() == 0


def test_no_webhook_check_where_the_receiver_is_not_installed(host, monkeypatch):
    config, answer = host
    answer["body"] = None  # would fail if asked
    monkeypatch.setattr(
        vh, "unit_props", lambda unit: {} if unit == "rave-webhook.service" else {"LoadState": "x"}
    )
    config["optional"] = ["webhook", "nginx"]
    assert vh.checks(config) == [
        ("ports", "only public ports on non-loopback", True, "[22]"),
        ("security", "sshd effective config", True, "as expected"),
    ]


def test_the_deploy_points_the_host_validation_at_the_receiver():
    from tasks.ops import validate_config

    config = json.loads(validate_config(make_settings()))
    assert config["webhook"] == {
        "url": "http://127.0.0.1:8001/healthz",
        "stalled_max_seconds": SPOOL_STALLED_MAX_SECONDS,
    }
    assert vh.STALLED_MAX_SECONDS == SPOOL_STALLED_MAX_SECONDS


@pytest.mark.parametrize(
    "health",
    [
        {"stalled_seconds": 0, "spool_records": 0, "dead_letters": 0},
        {"stalled_seconds": 121, "spool_records": 27874, "db": False, "dead_letters": 0},
        {"stalled_seconds": 500, "spool_records": 3, "dead_letters": 7},
        {"stalled_seconds": 130, "dead_letters": 10, "dead_letter_store_full": True, "db": False},
        {},
    ],
)
def test_validation_the_host_validator_and_the_health_check_agree(health, monkeypatch):
    from rave.ops import validate

    hc = load_host_program(
        ROOT / "files" / "healthcheck" / "rave-healthcheck", "rave_healthcheck_parity"
    )
    monkeypatch.setattr(hc, "fetch_health", lambda url: health)
    webhook = {"url": "http://127.0.0.1:8001/healthz"}
    control = [(ok, detail) for _, ok, detail in validate.webhook_queue_checks(health)]
    on_host = [(ok, detail) for _, _, ok, detail in vh.webhook_checks(webhook, health)]
    checked = [(r.ok, r.detail) for r in hc.check_webhook(webhook)]
    assert control == on_host == checked
