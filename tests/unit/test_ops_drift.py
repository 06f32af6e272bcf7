"""Drift detection from pyinfra's JSON dry-run plan (rave/ops/drift.py)."""

import json

import pytest

from rave.ops import drift

PLAN = {
    "plan": [
        {
            "op_hash": "a",
            "name": "Edge | Install the nginx site",
            "names": ["Edge | Install the nginx site"],
            "hosts_with_change": ["h1"],
            "hosts_with_conditional_change": [],
        },
        {
            "op_hash": "b",
            "name": "Edge | Reload nginx",
            "names": [],
            "hosts_with_change": [],
            "hosts_with_conditional_change": ["h1"],
        },
        {
            "op_hash": "c",
            "name": "Base | Install the base packages",
            "names": [],
            "hosts_with_change": [],
            "hosts_with_conditional_change": [],
        },
    ],
    "results": None,
}


def test_parse_plan_ignores_other_output():
    stdout = "--> Loading config...\n" + json.dumps(PLAN) + "\n"
    assert drift.parse_plan_output(stdout) == PLAN
    with pytest.raises(ValueError):
        drift.parse_plan_output("--> nothing here")


def test_drift_by_host_and_summary():
    found = drift.drift_by_host(PLAN, ["h1", "h2"])
    assert found["h1"].drifted and found["h1"].changes == ["Edge | Install the nginx site"]
    assert found["h1"].conditional == ["Edge | Reload nginx"]
    assert not found["h2"].drifted
    text = drift.summary(found)
    assert "h1: DRIFT, a deploy would change 1 operation(s)" in text
    assert "Reload nginx" not in text
    assert "  - Edge | Install the nginx site" in text
    assert "h2: in sync (0 changes)" in text


def test_summary_truncates_long_lists():
    item = drift.HostDrift("h", changes=[f"op {i}" for i in range(15)])
    text = drift.summary({"h": item}, limit=3)
    assert "... and 12 more" in text
