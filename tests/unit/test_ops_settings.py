"""Ops settings (rave/settings/ops.py) and the release record (tasks/release.py)."""

import json
import subprocess

import pytest
from pydantic import ValidationError

from tasks import release
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


def _git(repo, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def fresh_git_state():
    """git_state() is cached for the run: each call here asks git again."""
    git_state.cache_clear()
    yield lambda: (git_state.cache_clear(), git_state())[1]
    git_state.cache_clear()


def test_git_state_is_the_commit_and_whether_tracked_files_changed(
    tmp_path, monkeypatch, fresh_git_state
):
    monkeypatch.setattr(release, "REPO", tmp_path)
    assert fresh_git_state() == ("unknown", False)  # not a checkout
    _git(tmp_path, "init", "-q")
    (tmp_path / "deploy.py").write_text("one\n")
    _git(tmp_path, "add", "deploy.py")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "1")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert len(head) == 40
    assert fresh_git_state() == (head, False)
    (tmp_path / "untracked.py").write_text("not part of the checkout\n")
    assert fresh_git_state() == (head, False)
    (tmp_path / "deploy.py").write_text("two\n")
    assert fresh_git_state() == (head, True)


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
