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


def test_host_validation_script_is_valid_python():
    import ast
    from pathlib import Path

    source = Path(__file__).resolve().parents[2] / "files/ops/rave-validate-host"
    ast.parse(source.read_text())


def test_host_validation_fails_on_stale_security_lists(tmp_path):
    import importlib.machinery
    import importlib.util
    import os
    import time
    from pathlib import Path

    from tasks.ops import validate_config

    source = Path(__file__).resolve().parents[2] / "files/ops/rave-validate-host"
    loader = importlib.machinery.SourceFileLoader("rave_validate_host", str(source))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    config = json.loads(validate_config(make_settings()))
    assert config["apt_security_lists_max_age_days"] == 2
    assert config["apt_lists"] == "/var/lib/apt/lists"

    now = time.time()
    check = module.security_lists(str(tmp_path), 2, now)
    assert check[:3] == ("security", "security updates lists", False)
    release = tmp_path / "security.debian.org_debian-security_dists_bookworm-security_InRelease"
    release.write_text("")
    os.utime(release, (now - 10 * 86400, now - 10 * 86400))
    stale = module.security_lists(str(tmp_path), 2, now)
    assert stale[2] is False and "10.0 days old" in stale[3]
    os.utime(release, (now - 3600, now - 3600))
    assert module.security_lists(str(tmp_path), 2, now)[2] is True
