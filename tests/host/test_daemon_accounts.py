"""One identity per daemon, on a live host (issue 17, point 4).

Each monitoring daemon runs as the account its component declares (rave/components.py) and
reads only its own secrets; no service account owns (or may rename entries of) a directory
that root writes into; the health check and the vulnerability scan run as their own accounts
and still write their metrics. A host upgraded from the shared `prometheus` account (ownership
and dpkg's statoverrides put back as they were) is fixed by the next deploy.
"""

from __future__ import annotations

import re
import shlex
import time

import pytest

from rave import observability as obs
from rave.components import component
from rave.secrets.deploy import SECRETS_ROOT, secret_path
from tests.host.conftest import host_settings
from tests.host.test_security_alerts import failed_logins

DAEMONS = tuple(name for name in obs.OBSERVABILITY_COMPONENTS if component(name).account)
ALERTMANAGER_STATE = component("alertmanager").account.state_directory  # type: ignore[union-attr]
HEALTHCHECK = "rave-healthcheck.service"
VULNSCAN = "rave-vulnscan.service"


def sh(host, command: str) -> str:
    result = host.run(command)
    assert result.rc == 0, f"{command!r} exited {result.rc}: {result.stdout}{result.stderr}"
    return result.stdout


def readable_as(host, user: str, path: str) -> bool:
    """Can `user` open `path` for reading (the kernel's answer, nothing printed)?"""
    return host.run(f"runuser -u {user} -- head -c0 {shlex.quote(path)}").rc == 0


def running_user(host, unit: str) -> str:
    pid = sh(host, f"systemctl show -p MainPID --value {unit}").strip()
    assert pid not in ("", "0"), f"{unit} is not running"
    return sh(host, f"ps -o user= -p {pid}").strip()


def here(host) -> tuple[str, ...]:
    return obs.host_components(host_settings(host))


# --- each daemon its own account ----------------------------------------------------------


@pytest.mark.parametrize("name", DAEMONS)
def test_each_daemon_runs_as_its_own_account(host, name):
    if name not in here(host):
        pytest.fail(f"{name} is not deployed on this host")
    unit = f"{component(name).unit}.service"
    assert running_user(host, unit) == component(name).user
    groups = sh(host, f"id -Gn {component(name).user}").split()
    assert groups == [component(name).user], groups  # in no other group (prometheus's none)


def test_the_node_exporter_cannot_read_the_other_daemons_secrets(host):
    """The node exporter is reachable from the monitoring host: if it is taken over, its
    account must read neither Alertmanager's receivers (nor the config built from them) nor
    the postgres exporter's password."""
    node = component("node_exporter").user
    others = [
        secret_path("alertmanager", "alertmanager_receivers"),
        obs.ALERTMANAGER_RUNTIME_CONFIG,
        secret_path("postgres_exporter", "postgres_exporter_password"),
        secret_path("postgresql", "postgres_exporter_password"),
    ]
    for path in others:
        assert host.file(path).exists, path
        assert not readable_as(host, node, path), f"{node} can read {path}"
        assert not readable_as(host, "prometheus", path), f"prometheus can read {path}"
    # each owner still reads its own
    assert readable_as(host, component("alertmanager").user, others[0])
    assert readable_as(host, component("postgres_exporter").user, others[2])
    assert not readable_as(host, component("alertmanager").user, others[2])
    assert not readable_as(host, component("postgres_exporter").user, others[0])


def test_the_secret_directories_group_is_the_daemons_own(host):
    for name in ("alertmanager", "postgres_exporter"):
        directory = host.file(f"{SECRETS_ROOT}/{name}")
        assert (directory.user, directory.group, directory.mode) == (
            "root",
            component(name).user,
            0o550,
        )


def test_alertmanagers_state_is_its_accounts_and_dpkg_keeps_it(host):
    user = component("alertmanager").user
    stray = sh(host, f"find {ALERTMANAGER_STATE} ! -user {user} -o ! -group {user}").strip()
    assert stray == "", f"not {user}'s: {stray}"
    overrides = obs.parse_stat_overrides(sh(host, "dpkg-statoverride --list").splitlines())
    for path, wanted in obs.stat_overrides().items():
        assert overrides.get(path) == wanted, path
    # Alertmanager keeps its silences there: it can still write
    assert readable_as(host, user, ALERTMANAGER_STATE)
    assert host.run(f"runuser -u {user} -- test -w {ALERTMANAGER_STATE}").rc == 0


# --- no service account owns a directory root writes into ---------------------------------


# directories root writes into after install (deploy, timers, package scripts): each one and
# every parent must be root's, and writable by others only when sticky
ROOT_WRITES_INTO = (
    obs.TEXTFILE_DIR,
    "/etc/prometheus",
    "/etc/default",
    "/etc/rave",
    "/etc/systemd/system",
    SECRETS_ROOT,
    "/var/lib/rave",
    "/etc/postgresql/15/main/conf.d",  # pg_createcluster made it postgres's
    "/var/log/prometheus",  # logrotate; the postgres exporter's postinst made it prometheus's
    obs.GRAFANA_HOME,  # dpkg fills it; an older deploy made it the grafana account's home
)


def _unsafe_ancestors(host, path: str) -> list[str]:
    problems = []
    current = path
    while True:
        state = host.run(f"stat -c '%U %a' {shlex.quote(current)}")
        if state.rc == 0:
            owner, mode = state.stdout.split()
            bits = int(mode, 8)
            sticky = bool(bits & 0o1000)
            if owner != "root" or (bits & 0o022 and not sticky):
                problems.append(f"{current} {owner} {mode}")
        if current == "/":
            return problems
        current = current.rsplit("/", 1)[0] or "/"


def test_no_service_account_owns_a_directory_root_writes_into(host):
    problems = [p for path in ROOT_WRITES_INTO for p in _unsafe_ancestors(host, path)]
    assert problems == []


def test_a_service_account_cannot_swap_the_textfile_directory(host):
    """The old layout's hole: `prometheus` owned /var/lib/prometheus and could rename the
    root-written textfile directory away and put its own (or a link) in its place."""
    for account in ("prometheus", component("node_exporter").user, "rave-healthcheck"):
        moved = host.run(
            f"runuser -u {account} -- mv {obs.TEXTFILE_DIR} {obs.TEXTFILE_DIR}.swapped"
        )
        if moved.rc == 0:  # put it back before failing
            host.run(f"mv {obs.TEXTFILE_DIR}.swapped {obs.TEXTFILE_DIR}")
        assert moved.rc != 0, f"{account} renamed {obs.TEXTFILE_DIR}"
    # and a metrics writer cannot replace root's metrics files (sticky directory)
    backup = f"{obs.TEXTFILE_DIR}/rave_updates.prom"
    assert host.file(backup).user == "root"
    planted = host.run(
        f"runuser -u rave-healthcheck -- sh -c 'echo x > {obs.TEXTFILE_DIR}/.plant "
        f"&& mv -f {obs.TEXTFILE_DIR}/.plant {backup}'"
    )
    host.run(f"rm -f {obs.TEXTFILE_DIR}/.plant")
    assert planted.rc != 0 and host.file(backup).user == "root"


# --- the health check and the scan as their own accounts -----------------------------------


def _started(host, unit: str, timeout: float = 300) -> None:
    sh(host, f"systemctl reset-failed {unit}; systemctl start {unit}")
    deadline = time.monotonic() + timeout
    while host.run(f"systemctl is-active --quiet {unit}").rc == 0:
        assert time.monotonic() < deadline, f"{unit} still running"
        time.sleep(2)
    result = sh(host, f"systemctl show -p Result --value {unit}").strip()
    assert result == "success", f"{unit}: {result}"


def test_the_health_check_runs_as_its_account_and_writes_its_metrics(host, staging):
    prom = f"{obs.TEXTFILE_DIR}/rave_healthcheck.prom"
    before = host.file(prom).mtime if host.file(prom).exists else None
    # a failed login it must find in the journal (read through its group, not as root)
    assert failed_logins(staging, host.check_output("hostname").strip(), 2)
    _started(host, HEALTHCHECK)
    props = sh(host, f"systemctl show -p User -p CapabilityBoundingSet {HEALTHCHECK}")
    assert "User=rave-healthcheck" in props and "CapabilityBoundingSet=\n" in props
    written = host.file(prom)
    assert written.user == "rave-healthcheck" and written.mtime != before
    text = written.content_string
    # the certificate (a credential), the journal (its group) and the units were all read
    assert 'rave_healthcheck_check_ok{check="certificate",target="tls_certificate"} 1' in text
    failures = re.search(r"^rave_ssh_auth_failures_recent (\S+)$", text, re.MULTILINE)
    assert failures and float(failures.group(1)) >= 2, "the journal was not read"
    assert 'rave_healthcheck_check_ok{check="unit",target="nginx.service"} 1' in text
    fail2ban = host.file(f"{obs.TEXTFILE_DIR}/rave_fail2ban.prom")
    assert fail2ban.user == "root" and "rave_fail2ban_up 1" in fail2ban.content_string
    # the check's account reads no secret directly
    assert not readable_as(host, "rave-healthcheck", secret_path("nginx", "tls_certificate"))


def test_the_scan_runs_as_its_account_and_writes_its_report(host):
    _started(host, VULNSCAN, timeout=600)
    assert sh(host, f"systemctl show -p User --value {VULNSCAN}").strip() == "rave-vulnscan"
    for path in (f"{obs.TEXTFILE_DIR}/rave_vulnscan.prom", "/var/lib/rave/vulnscan/report.json"):
        assert host.file(path).user == "rave-vulnscan", path
    stray = sh(host, "find /var/lib/rave/vulnscan ! -user rave-vulnscan").strip()
    assert stray == ""


# --- a host upgraded from the shared account ----------------------------------------------


def test_a_host_with_the_old_layout_is_fixed_by_the_next_deploy(host, staging):
    """Put back what a host deployed before this change has: Alertmanager's state and
    /var/lib/prometheus owned by `prometheus` without statoverrides, the health check's and the
    scan's files root's; the drop-ins as Debian's units run them (User=prometheus)."""
    state = ALERTMANAGER_STATE
    for path in obs.stat_overrides():
        host.run(f"dpkg-statoverride --remove {path}")  # absent: fine
    sh(host, f"chown prometheus:prometheus /var/lib/prometheus; chown -R prometheus: {state}")
    sh(host, f"chown -R root:root /var/lib/rave/vulnscan {obs.TEXTFILE_DIR}/rave_healthcheck.prom")
    # and one a service account left where the scan writes (it could not replace it)
    sh(host, f"chown prometheus: {obs.TEXTFILE_DIR}/rave_vulnscan.prom")
    for name in DAEMONS:
        dropin = f"/etc/systemd/system/{component(name).unit}.service.d/rave.conf"
        sh(host, f"sed -i 's/^User=.*/User=prometheus/; s/^Group=.*/Group=prometheus/' {dropin}")
    # (not restarted: its secrets are already its own account's group, which the old
    # drop-in's user is not in; the deploy must restart each daemon as its account)
    sh(host, "systemctl daemon-reload")

    result = staging.deploy()
    assert result.ok, result.summary()
    test_alertmanagers_state_is_its_accounts_and_dpkg_keeps_it(host)
    test_no_service_account_owns_a_directory_root_writes_into(host)
    for name in DAEMONS:
        assert running_user(host, f"{component(name).unit}.service") == component(name).user
    assert host.file(f"{obs.TEXTFILE_DIR}/rave_healthcheck.prom").user == "rave-healthcheck"
    # silences survive: Alertmanager reads and writes its state as the new account
    status = sh(host, "curl -fsS --max-time 10 http://127.0.0.1:9093/api/v2/status")
    assert '"cluster"' in status
    test_the_scan_runs_as_its_account_and_writes_its_report(host)
