"""Debug mode: one setting, off by default, refused in production unless acknowledged in the same
file; what it renders on the host, and that off renders exactly what a never-debug host has."""

from __future__ import annotations

import re

import pytest

from rave import observability as obs
from rave.render import render
from rave.settings.debug import DEBUG_MODE_DEFAULT
from rave.validation import ACKNOWLEDGED_RISKS, DataLayer, HostDataError, validate_host
from tasks import edge, webhook
from tests.unit.conftest import SAMPLE_KEY, make_settings

# a production host whose backups are off, so only debug mode is under test
PROD = {"rave_environment": "prod", "backup_enabled": False, "operator_keys": [SAMPLE_KEY]}


def refusal(layers: list[DataLayer]) -> str:
    with pytest.raises(HostDataError) as error:
        validate_host("h1", layers)
    return str(error.value)


def test_debug_mode_is_off_by_default():
    assert DEBUG_MODE_DEFAULT is False
    assert make_settings().debug_mode is False


def test_production_refuses_debug_mode_unacknowledged():
    message = refusal([DataLayer("group_data/prod.py", {**PROD, "debug_mode": True})])
    assert "host h1: debug_mode in group_data/prod.py (True)" in message
    assert "in environment 'prod' and is not acknowledged" in message
    assert "debug_mode_acknowledged = True in group_data/prod.py" in message
    assert "DebugModeOn" in message


def test_production_accepts_debug_mode_acknowledged_in_the_same_file():
    data = {**PROD, "debug_mode": True, "debug_mode_acknowledged": True}
    assert validate_host("h1", [DataLayer("group_data/prod.py", data)]).debug_mode


@pytest.mark.parametrize(
    ("debug_in", "acknowledged_in"),
    [
        ("inventories/prod.py (host h1)", "group_data/prod.py"),
        ("group_data/prod.py", "group_data/all.py"),
        ("command line --data", "group_data/prod.py"),
    ],
)
def test_the_acknowledgement_must_sit_next_to_debug_mode(debug_in, acknowledged_in):
    layers = [
        DataLayer("command line --data", {}),
        DataLayer("inventories/prod.py (host h1)", {}),
        DataLayer("group_data/prod.py", dict(PROD)),
        DataLayer("group_data/all.py", {}),
    ]
    by_source = {layer.source: layer.data for layer in layers}
    by_source[debug_in]["debug_mode"] = True  # type: ignore[index]
    by_source[acknowledged_in]["debug_mode_acknowledged"] = True  # type: ignore[index]
    message = refusal(layers)
    assert f"debug_mode in {debug_in} (True)" in message
    assert f"is acknowledged in {acknowledged_in}, not next to debug_mode" in message
    assert f"debug_mode_acknowledged = True in {debug_in}" in message


def test_staging_runs_debug_mode_unacknowledged():
    data = {**PROD, "rave_environment": "staging", "debug_mode": True}
    assert validate_host("h1", [DataLayer("group_data/staging.py", data)]).debug_mode


def test_every_unacknowledged_risk_is_reported_at_once():
    data = {**PROD, "backup_enabled": True, "debug_mode": True}
    message = refusal([DataLayer("group_data/prod.py", data)])
    assert "backup_repository in defaults (no file sets it)" in message
    assert "debug_mode in group_data/prod.py (True)" in message
    # each acknowledgement is a declared setting (unknown keys are refused)
    for risk in ACKNOWLEDGED_RISKS:
        assert getattr(make_settings(**{risk.acknowledgement: True}), risk.acknowledgement)
    assert {risk.alert for risk in ACKNOWLEDGED_RISKS} == {"BackupRepositoryOnHost", "DebugModeOn"}


def _rendered(**overrides) -> dict[str, str]:
    config = make_settings(**overrides)
    return {
        "nginx": render("nginx/nginx.conf.j2", **edge.nginx_context(config)),
        "status": render("nginx/index.html.j2", **edge.status_context(config)),
        "node": obs.node_exporter_args(config),
        "postgres": obs.postgres_exporter_environment(config)["ARGS"],
        "nginx_exporter": obs.nginx_exporter_args(config),
        "metric": obs.debug_mode_textfile(config),
        "webhook": repr(webhook.app_config(config)),
    }


def test_debug_mode_off_is_what_a_never_debug_host_renders():
    never = _rendered()
    off = _rendered(debug_mode=False, debug_mode_acknowledged=True)
    assert off == never
    assert "error_log /var/log/nginx/error.log warn;" in never["nginx"]
    assert "rave_debug" not in never["nginx"] and "DEBUG MODE" not in never["status"]
    assert "log.level" not in never["node"] + never["postgres"]
    assert never["metric"].endswith("\nrave_debug_mode 0\n")


def test_debug_mode_on_is_verbose_and_loud():
    on = _rendered(debug_mode=True)
    assert "error_log /var/log/nginx/error.log info;" in on["nginx"]
    assert "access_log /var/log/nginx/access.log rave_debug;" in on["nginx"]
    assert "DEBUG MODE IS ON" in on["status"]
    assert on["node"].endswith(obs.EXPORTER_DEBUG_ARG)
    assert on["postgres"].endswith(obs.EXPORTER_DEBUG_ARG)
    assert on["metric"].endswith("\nrave_debug_mode 1\n")
    assert "'debug': True" in on["webhook"]
    # nginx's own debug level logs every request header (signatures, tokens): never that
    assert not re.search(r"error_log \S+ debug", on["nginx"])


def test_the_debug_access_line_logs_no_request_header_but_referer_and_user_agent():
    on = _rendered(debug_mode=True)["nginx"]
    start = on.index("log_format rave_debug")
    line = on[start : on.index(";", start)]
    headers = set(re.findall(r"\$(?:http|sent_http|cookie)_[a-z0-9_]+", line))
    assert headers == {"$http_referer", "$http_user_agent"}
    assert "$request_body" not in line and "$args" not in line
