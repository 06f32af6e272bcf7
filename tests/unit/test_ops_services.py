"""Service management helpers and the cross-host status table (rave/ops/services.py)."""

import pytest

from rave.ops import report, services

MB = 1024 * 1024


def state(unit, present=True, active="active", memory=10 * MB, limit=100 * MB):
    return {
        "unit": unit,
        "present": present,
        "active_state": active,
        "sub_state": "running" if active == "active" else "dead",
        "enabled": "enabled",
        "memory_current": memory,
        "memory_max": limit,
        "active_since": 1000,
        "restarts": 0,
    }


HOST = {
    "sshd": state("ssh.service", limit=None),
    "nginx": state("nginx.service"),
    "webhook": state("rave-webhook.service", active="failed"),
    "grafana": state("grafana-server.service", present=False),
}


def test_targets_all_present_in_declaration_order():
    assert services.targets(HOST, [], "start") == ["sshd", "nginx", "webhook"]


def test_bulk_stop_and_restart_spare_sshd():
    assert services.targets(HOST, [], "stop") == ["nginx", "webhook"]
    assert services.targets(HOST, [], "restart") == ["nginx", "webhook"]
    assert services.targets(HOST, ["sshd"], "restart") == ["sshd"]


def test_targets_refuse_units_not_on_the_host():
    with pytest.raises(services.NotInstalled, match="grafana"):
        services.targets(HOST, ["grafana"], "start")


def test_status_table_one_row_per_present_service_per_host():
    text = services.status_table({"h1": HOST, "h2": HOST}, now=1000 + 7200)
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["HOST", "COMPONENT", "UNIT", "STATE"]
    rows = lines[2:]
    assert len(rows) == 6
    assert any("h2" in row and "failed/dead" in row for row in rows)
    assert "grafana" not in text
    assert "10M / 100M (10%)" in text
    assert "no limit" in text
    assert "2h ago" in text


def test_timer_driven_oneshot_shows_its_timer():
    backup = {
        **state("rave-backup.service", active="inactive"),
        "type": "oneshot",
        "timer": "rave-backup.timer",
        "timer_state": "active",
        "result": "success",
    }
    # any component may be such a unit (the backup is one); the key only picks the row
    text = services.status_table({"h": {"webhook": backup}}, now=2000)
    assert "inactive/dead, last success, rave-backup.timer active" in text


def test_collect_reports_once_every_host_is_in():
    assert report.collect("t", "b", 2, expected=2) is None
    assert report.collect("t", "a", 1, expected=2) == {"a": 1, "b": 2}
    # the bucket is reset for the next run
    assert report.collect("t", "a", 1, expected=2) is None
    assert report.collect("t", "b", 1, expected=2) is not None


def test_human_formats():
    assert report.human_bytes(None) == "-"
    assert report.human_bytes(512) == "512B"
    assert report.human_bytes(3 * MB) == "3M"
    assert report.human_age(None) == "-"
    assert report.human_age(100, now=100 + 90061) == "1d ago"
    assert report.human_age(100, now=130) == "30s ago"
