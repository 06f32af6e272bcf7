"""Alert rules of the vulnerability scan: promtool checks them and runs their unit tests."""

import subprocess
from pathlib import Path

import pytest

from tests.tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "files" / "prometheus" / "rules" / "vulnscan.yml"
TESTS = ROOT / "tests" / "unit" / "promtool" / "vulnscan.test.yml"


@pytest.fixture(scope="module")
def promtool():
    return require_tool("promtool")


def test_rules_are_valid(promtool):
    done = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_rule_unit_tests_pass(promtool):
    done = subprocess.run(
        [promtool, "test", "rules", str(TESTS)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
