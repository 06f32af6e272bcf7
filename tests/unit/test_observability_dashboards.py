"""The three Grafana dashboards: valid JSON, provisioned datasource, valid PromQL."""

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from rave import observability as obs
from tests.tools import require_tool
from tests.unit.grafana_types import dashboard_problems

DASHBOARDS = sorted(
    (Path(__file__).resolve().parents[2] / "files/grafana/dashboards").glob("*.json")
)


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_the_three_dashboards():
    titles = {_load(p)["title"] for p in DASHBOARDS}
    assert titles == {"RAVE / System Health", "RAVE / Project Health", "RAVE / Agent Performance"}
    uids = [_load(p)["uid"] for p in DASHBOARDS]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_panel_queries_the_provisioned_prometheus(path):
    dashboard = _load(path)
    assert dashboard["panels"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(set(ids)) == len(ids)
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == obs.GRAFANA_DATASOURCE_UID
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == obs.GRAFANA_DATASOURCE_UID
            assert target["expr"].strip()


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_query_is_valid_promql(path, tmp_path):
    """promtool parses each query (as a recording rule), after Grafana's substitutions."""
    promtool = require_tool("promtool")
    rules = [
        {"record": f"panel:{i}", "expr": obs.grafana_expr(expr, "30s")}
        for i, (_, expr) in enumerate(obs.dashboard_queries(_load(path)))
    ]
    assert rules
    rule_file = tmp_path / "panels.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(rule_file)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "$__" not in rule_file.read_text()


def test_grafana_variables_are_substituted():
    assert obs.grafana_expr("rate(x[$__rate_interval])", "15s") == "rate(x[60s])"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_dashboard_is_a_grafana_dashboard(path):
    """Parsed into Grafana's own Dashboard type (grafana-foundation-sdk, Grafana 11.6): no
    field it does not know, none of another type (no Grafana server can run here)."""
    assert dashboard_problems(_load(path)) == []


def _first_panel(dashboard: dict) -> dict:
    return dashboard["panels"][0]


MISTAKES = {
    "unknown top-level field": (lambda d: d.update(refresh_rate="30s"), "dashboard.refresh_rate"),
    "misspelled panel field": (lambda d: _first_panel(d).update(titel="x"), "panels[0].titel"),
    "misspelled query field": (
        lambda d: _first_panel(d)["targets"][0].update(exp="up"),
        "targets[0].exp",
    ),
    "unknown panel option": (
        lambda d: _first_panel(d).setdefault("options", {}).update(legendd={}),
        "options.legendd",
    ),
    "grid height as text": (lambda d: _first_panel(d)["gridPos"].update(h="8"), "grid_pos.h"),
    "title as a number": (lambda d: d.update(title=7), "dashboard.title"),
    "refresh as a number": (lambda d: d.update(refresh=30), "dashboard.refresh"),
    "unknown graph tooltip": (lambda d: d.update(graphTooltip=9), "graph_tooltip"),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_an_unknown_or_mistyped_field_is_refused(path, mistake):
    """The check can fail: each mistake Grafana would drop or misread is named."""
    change, where = MISTAKES[mistake]
    dashboard = _load(path)
    change(dashboard)
    problems = dashboard_problems(dashboard)
    assert any(where in problem for problem in problems), problems
