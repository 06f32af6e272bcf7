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
