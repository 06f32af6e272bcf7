"""Ops settings (rave/settings/ops.py) and the release record (tasks/release.py)."""

import json

import pytest
from pydantic import ValidationError

from tasks.release import git_state, release_text
from tests.unit.conftest import make_settings


def test_ops_services_accepts_a_comma_list():
    assert make_settings(ops_services="webhook, nginx").ops_services == ["webhook", "nginx"]
    assert make_settings().ops_services == []


def test_ops_services_refuses_unknown_components():
    with pytest.raises(ValidationError, match="unknown component"):
        make_settings(ops_services="webhok")


def test_ops_action_is_checked():
    with pytest.raises(ValidationError):
        make_settings(ops_action="reboot")


def test_release_record_is_stable_and_has_no_timestamp():
    one = release_text("abc", False, "SAFE", "staging")
    assert one == release_text("abc", False, "SAFE", "staging")
    assert json.loads(one) == {
        "commit": "abc",
        "environment": "staging",
        "mode": "SAFE",
        "modified": False,
    }


def test_git_state_of_this_checkout():
    commit, modified = git_state()
    assert commit == "unknown" or len(commit) == 40
    assert isinstance(modified, bool)


def test_host_validation_expectations_follow_components_and_mode():
    from rave.components import COMPONENTS
    from tasks.ops import validate_config

    safe = json.loads(validate_config(make_settings()))
    full = json.loads(validate_config(make_settings(rave_mode="FULL_PIPE")))
    assert set(safe["units"]) == {c.name for c in COMPONENTS}
    assert safe["public_ports"] == [22, 3002]
    assert safe["memory_max"]["webhook"] == 192 * 1024 * 1024
    assert full["memory_max"]["webhook"] == 384 * 1024 * 1024
    assert "grafana" in safe["optional"]


def test_host_validation_expects_only_what_the_hosts_role_runs():
    """A monitoring host does not miss the services it never runs; a service host scraped by
    one expects its exporters beyond loopback (rave/topology.py)."""
    from tasks.ops import validate_config

    monitor = json.loads(
        validate_config(
            make_settings(
                monitoring_role=True,
                host_address="10.0.0.9",
                monitoring_scrape_hosts={"svc-1": "10.0.0.1"},
            )
        )
    )
    assert set(monitor["units"]) == {
        "sshd",
        "prometheus",
        "alertmanager",
        "node_exporter",
        "grafana",
        "backup",
    }
    assert monitor["public_ports"] == [22, 3002]
    service = json.loads(
        validate_config(make_settings(host_address="10.0.0.1", monitoring_addresses=["10.0.0.9"]))
    )
    assert "postgresql" in service["units"]
    assert service["public_ports"] == [22, 3002, 9100, 9113, 9187]


def test_host_validation_script_is_valid_python():
    import ast
    from pathlib import Path

    source = Path(__file__).resolve().parents[2] / "files/ops/rave-validate-host"
    ast.parse(source.read_text())
