"""Alert rules: promtool checks them and runs their unit tests; every alert has a test."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
RULES = sorted((ROOT / "files" / "prometheus" / "rules").glob("*.yml"))
RULE_TESTS = sorted((ROOT / "tests" / "unit" / "promtool").glob("*.test.yml"))


def promtool() -> str:
    return require_tool("promtool")


def _alerts() -> set[str]:
    return {
        rule["alert"]
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def test_rule_files_exist():
    assert RULES and RULE_TESTS


def test_promtool_checks_the_rules():
    result = subprocess.run(
        [promtool(), "check", "rules", *map(str, RULES)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests_pass():
    result = subprocess.run(
        [promtool(), "test", "rules", *map(str, RULE_TESTS)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_test_case():
    tested = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    tested.add(check["alertname"])
    assert _alerts() - tested == set(), "alerts without a test that makes them fire"


@pytest.mark.parametrize(
    "alert",
    [
        "HostDown",
        "TargetDown",
        "DiskWillFillIn24h",
        "MemoryPressure",
        "SystemdUnitFailed",
        "CertificateExpiringSoon",
        "WebhookErrorRateHigh",
        "WebhookSpoolDepthHigh",
        "WebhookSpoolNotDraining",
        "WebhookDeadLetters",
        "WebhookDeadLetterStoreFull",
        "PostgresDown",
        "PostgresNearMaxConnections",
        "BackupTooOld",
        "HealthCheckFailing",
    ],
)
def test_day_one_alerts_exist(alert):
    assert alert in _alerts()


def test_a_broken_expectation_fails(tmp_path):
    """The rule tests can fail: a test expecting HostDown too early is refused."""
    rules = tmp_path / "rules.yml"
    shutil.copy(RULES[0], rules)
    broken = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": 'up{job="node", instance="h1"}', "values": "0x5"}],
                "alert_rule_test": [
                    {
                        "eval_time": "1m",
                        "alertname": "HostDown",
                        "exp_alerts": [{"exp_labels": {"severity": "critical"}}],
                    }
                ],
            }
        ],
    }
    test_file = tmp_path / "broken.test.yml"
    test_file.write_text(yaml.safe_dump(broken))
    result = subprocess.run(
        [promtool(), "test", "rules", str(test_file)], capture_output=True, text=True
    )
    assert result.returncode != 0


def _rule(name: str) -> dict:
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if rule.get("alert") == name:
                    return dict(rule)
    raise AssertionError(f"no alert {name}")


def test_the_spool_stall_alert_uses_validations_limit():
    """The alert, `rave-ops validate` and the health check fail at the same stall."""
    from rave.ops.validate import SPOOL_STALLED_MAX_SECONDS

    rule = _rule("WebhookSpoolNotDraining")
    limit = SPOOL_STALLED_MAX_SECONDS
    assert rule["expr"].strip() == f"rave_webhook_spool_stalled_seconds > {limit}"
    assert rule["labels"]["severity"] == "critical"
    assert _rule("WebhookDeadLetters")["labels"]["severity"] == "warning"
    assert _rule("WebhookDeadLetterStoreFull")["labels"]["severity"] == "critical"
