"""One identity per daemon (issue 17, point 4): declared once with the component in
rave/components.py; the units' drop-ins, the accounts, the secrets' groups and dpkg's
statoverrides are derived from it."""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import ValidationError

from rave import observability as obs
from rave.components import COMPONENTS, Account, Component, component, own_accounts
from rave.render import render
from rave.secrets.deploy import account_names, manifest
from rave.settings import HostSettings
from tasks import observability as obs_task
from tasks import vulnscan as vulnscan_task
from tests.unit.conftest import make_settings

DAEMONS = ("alertmanager", "node_exporter", "postgres_exporter", "nginx_exporter")


def _settings(**extra) -> HostSettings:
    return make_settings(**extra)


def test_each_monitoring_daemon_has_an_account_of_its_own():
    users = [component(name).user for name in DAEMONS]
    assert len(set(users)) == len(DAEMONS)
    assert "prometheus" not in users
    for name in DAEMONS:
        assert component(name).account is not None
        assert component(name).user == component(name).account.name  # derived, not repeated


def test_no_account_is_shared_by_components_that_read_secrets():
    shared = {user for user, n in Counter(c.user for c in COMPONENTS if c.user).items() if n > 1}
    readers = [c.name for c in COMPONENTS if c.user in shared and c.secrets]
    assert readers == [], f"these share an account with another component: {readers}"


def test_the_secrets_manifest_names_the_own_account():
    text = manifest(component("postgres_exporter"), {})
    assert '"user": "rave-postgres-exporter"' in text
    assert set(account_names()) >= {a.name for _, a in own_accounts()}


def test_a_declared_user_other_than_the_account_is_refused():
    with pytest.raises(ValidationError, match="is not its account"):
        Component(name="x", unit="x", user="prometheus", account=Account(name="rave-x"))


@pytest.mark.parametrize("state", ["/etc/x", "/var/lib/../etc", "/var/lib/x/", "var/lib/x"])
def test_a_state_directory_outside_var_lib_is_refused(state):
    with pytest.raises(ValidationError, match="state_directory"):
        Account(name="rave-x", state_directory=state)


@pytest.mark.parametrize("name", DAEMONS)
def test_the_dropin_runs_the_daemon_as_its_account(name):
    text = obs_task.sandbox_dropin(name, _settings())
    lines = text.splitlines()
    account = component(name).account
    assert f"User={account.name}" in lines and f"Group={account.name}" in lines
    if account.state_directory:
        assert f"StateDirectory={account.state_directory.removeprefix('/var/lib/')}" in lines
        assert "StateDirectoryMode=0750" in lines
    else:
        assert not any(line.startswith("StateDirectory") for line in lines)


def test_prometheus_keeps_the_packages_user():
    assert "User=" not in obs_task.sandbox_dropin("prometheus", _settings())


def test_dpkg_keeps_the_state_directory_the_accounts_and_var_lib_prometheus_roots():
    overrides = obs.stat_overrides()
    assert overrides["/var/lib/prometheus"] == ("root", "root", "755")
    assert overrides["/var/lib/prometheus/alertmanager"] == (
        "rave-alertmanager",
        "rave-alertmanager",
        "750",
    )
    listed = [f"{u} {g} 0{m} {p}" for p, (u, g, m) in overrides.items()]
    assert obs.parse_stat_overrides(listed) == overrides  # so a second deploy changes nothing
    # the state directory is left to systemd's recursive chown (not --update)
    assert "--update" not in obs.stat_override_command(
        "/var/lib/prometheus/alertmanager", overrides["/var/lib/prometheus/alertmanager"]
    )
    assert "--update" in obs.stat_override_command(
        "/var/lib/prometheus", overrides["/var/lib/prometheus"]
    )


def test_no_account_home_is_a_tree_root_fills():
    from rave.secrets.deploy import accounts_to_create

    grafana = next(a for a in accounts_to_create(set()) if a.name == "grafana")
    assert grafana.home == obs.GRAFANA_HOME and not grafana.ensure_home
    assert set(obs.ROOT_OWNED_PACKAGE_DIRS) <= set(obs.stat_overrides())


def test_the_textfile_directory_is_roots_and_sticky():
    assert obs.TEXTFILE_MODE == "1775" and obs.TEXTFILE_GROUP in obs.HEALTHCHECK_GROUPS


def test_the_health_check_runs_as_its_account_without_capabilities():
    config = _settings()
    text = render(
        "healthcheck/rave-healthcheck.service.j2", **obs_task.healthcheck_unit_context(config)
    )
    lines = text.splitlines()
    assert "User=rave-healthcheck" in lines
    assert "SupplementaryGroups=systemd-journal rave-metrics" in lines
    assert "LoadCredential=tls_certificate:/run/rave/secrets/nginx/tls_certificate" in lines
    assert any(line.startswith("ExecStartPre=!") and "--fail2ban-only" in line for line in lines)
    assert any(line.startswith("ExecStart=") and "--no-fail2ban" in line for line in lines)
    dropin = obs_task.dropin_text(obs_task.HEALTHCHECK_SANDBOX, None, "x").splitlines()
    assert "CapabilityBoundingSet=" in dropin and "AmbientCapabilities=" in dropin


def test_without_nginx_the_health_check_asks_for_no_certificate():
    config = _settings(monitoring_role=True)
    assert obs.healthcheck_certificates(config) == []
    assert obs_task.healthcheck_unit_context(config)["credentials"] == []


def test_the_scan_runs_as_its_account():
    config = _settings()
    context = vulnscan_task.templates(config)["vulnscan/rave-vulnscan.service.j2"]
    lines = render("vulnscan/rave-vulnscan.service.j2", **context).splitlines()
    assert "User=rave-vulnscan" in lines
    assert "SupplementaryGroups=rave-metrics" in lines
    assert "StateDirectory=rave/vulnscan" in lines


def test_template_contexts_leave_put_templates_owner_arguments_alone():
    """put_template takes user/group/mode as the file's owner and mode: a context key of that
    name would be swallowed (and the unit file rendered without it)."""
    config = _settings()
    contexts = {**obs_task.templates(config), **vulnscan_task.templates(config)}
    for template, context in contexts.items():
        assert not {"user", "group", "mode"} & set(context), template
