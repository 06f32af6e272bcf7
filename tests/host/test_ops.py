"""Operations on a deployed staging host: services, validation, drift, facts, update rollback.

Every test that breaks something restores it in a `finally` block and waits (with a deadline)
until the host is back, so the tests after it see a healthy host.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rave.components import COMPONENTS
from rave.settings.ccr import CcrSettings

REPO = Path(__file__).resolve().parents[2]
NGINX_CONF = "/etc/nginx/nginx.conf"
TEST_PORT = 9999
TEST_UNIT = "rave-ops-test-port"


def rave_ops(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rave.ops.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def sudo(staging, name: str, command: str) -> subprocess.CompletedProcess[str]:
    return staging.ssh(name, f"sudo sh -c {json.dumps(command)}")


def wait_until(predicate, what: str, deadline: float = 60.0, interval: float = 0.5) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(interval)
    pytest.fail(f"timed out after {deadline:.0f}s waiting for {what}", pytrace=False)


def facts(name: str, *fact_names: str) -> dict:
    result = rave_ops("--limit", name, "facts", *fact_names, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(result.stdout)
    return {key.rsplit(".", 1)[-1]: value[name] for key, value in data.items()}


def unit_active(staging, name: str, unit: str) -> bool:
    return staging.ssh(name, f"systemctl is-active {unit}").stdout.strip() == "active"


@pytest.fixture(scope="module")
def name(staging) -> str:
    return staging.names[0]


def test_status_table_lists_every_installed_service(staging, name):
    installed = facts(name, "ProjectServices")["ProjectServices"]
    result = rave_ops("--limit", name, "status", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["HOST", "COMPONENT", "UNIT", "STATE"]
    rows = {line.split()[1]: line for line in lines[2:] if line.startswith(name)}
    present = {c.name for c in COMPONENTS if installed[c.name]["present"]}
    assert set(rows) == present
    assert {"nginx", "webhook", "postgresql"} <= present
    for component, row in rows.items():
        if installed[component]["timer"]:  # a oneshot its timer starts (the backup)
            assert f"{installed[component]['timer']} active" in row, row
        else:
            assert "active/running" in row, f"{component} not running: {row}"
    # memory against the mode's limit, e.g. "23M / 192M (12%)"
    assert " / 192M (" in rows["webhook"]


def test_restart_and_logs_of_one_service(staging, name):
    before = facts(name, "ProjectServices")["ProjectServices"]["webhook"]["active_since"]
    time.sleep(1.1)  # active_since has a resolution of one second
    result = rave_ops("--limit", name, "restart", "webhook", timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    after = facts(name, "ProjectServices")["ProjectServices"]["webhook"]
    assert after["active_state"] == "active"
    assert after["active_since"] > before
    logs = rave_ops("--limit", name, "logs", "webhook", "-n", "5", timeout=120)
    assert logs.returncode == 0, logs.stderr[-2000:]
    assert f"==> {name} rave-webhook.service" in logs.stdout


def test_unknown_or_missing_service_is_refused(name):
    result = rave_ops("--limit", name, "restart", "no-such-component", timeout=120)
    assert result.returncode != 0
    assert "unknown component" in result.stderr


def test_validation_passes_on_the_deployed_host(name):
    result = rave_ops("--limit", name, "validate", timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    stages = {line.split()[1] for line in result.stdout.splitlines()[2:] if line.startswith(name)}
    assert stages == {
        "1.connectivity",
        "2.security",
        "3.services",
        "4.ports",
        "5.application",
        "6.resources",
    }
    assert " FAIL " not in result.stdout
    assert "signed webhook accepted" in result.stdout


def test_validation_fails_loudly_when_nginx_is_stopped(staging, name):
    try:
        stop = rave_ops("--limit", name, "stop", "nginx", timeout=180)
        assert stop.returncode == 0, stop.stderr[-2000:]
        assert not unit_active(staging, name, "nginx")
        result = rave_ops("--limit", name, "validate", timeout=180)
        assert result.returncode == 1
        assert f"{name} services/nginx" in result.stdout
        assert "application/status page" in result.stdout
        assert "validation FAILED" in result.stderr
        host_side = sudo(staging, name, "/usr/local/sbin/rave-validate-host")
        assert host_side.returncode == 1
        assert any(
            line.startswith("FAIL") and line.split()[1:3] == ["services", "nginx"]
            for line in host_side.stdout.splitlines()
        ), host_side.stdout
    finally:
        sudo(staging, name, "systemctl start nginx")
        wait_until(lambda: unit_active(staging, name, "nginx"), "nginx to run again")


def test_validation_fails_loudly_on_an_extra_open_port(staging, name):
    def listening() -> bool:
        out = staging.ssh(name, f"ss -Hltn 'sport = :{TEST_PORT}'").stdout
        return f":{TEST_PORT}" in out

    try:
        started = sudo(
            staging,
            name,
            f"systemd-run --unit {TEST_UNIT} --collect "
            f"python3 -m http.server {TEST_PORT} --bind 0.0.0.0",
        )
        assert started.returncode == 0, started.stderr
        wait_until(listening, f"a listener on port {TEST_PORT}", deadline=30)
        result = rave_ops("--limit", name, "validate", timeout=180)
        assert result.returncode == 1
        assert f"0.0.0.0:{TEST_PORT}" in result.stdout
        assert f"{name} ports/only 22/3002 on non-loopback" in result.stdout
    finally:
        sudo(staging, name, f"systemctl stop {TEST_UNIT}; systemctl reset-failed {TEST_UNIT}")
        wait_until(lambda: not listening(), f"port {TEST_PORT} to close", deadline=30)


def test_host_side_validation_timer_passes(staging, name):
    assert staging.ssh(name, "systemctl is-enabled rave-validate.timer").stdout.strip() == (
        "enabled"
    )
    assert staging.ssh(name, "systemctl is-active rave-validate.timer").stdout.strip() == "active"
    run = sudo(staging, name, "/usr/local/sbin/rave-validate-host")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "FAILED" not in run.stdout
    metric = sudo(staging, name, "cat /var/lib/prometheus/node-exporter/rave_validation.prom")
    assert "rave_validation_failed_checks 0" in metric.stdout


def test_drift_reports_a_changed_file_and_nothing_else(staging, name):
    clean = rave_ops("--limit", name, "drift", timeout=300)
    assert clean.returncode == 0, clean.stdout + clean.stderr[-2000:]
    assert f"{name}: in sync (0 changes)" in clean.stdout
    original = sudo(staging, name, f"cat {NGINX_CONF}").stdout
    try:
        sudo(staging, name, f"echo '# drift test' >> {NGINX_CONF}")
        drifted = rave_ops("--limit", name, "drift", timeout=300)
        assert drifted.returncode == 1, drifted.stdout + drifted.stderr[-2000:]
        assert f"{name}: DRIFT, a deploy would change" in drifted.stdout
        changed = [line for line in drifted.stdout.splitlines() if line.startswith("  - ")]
        assert changed and all("nginx" in line.lower() for line in changed), drifted.stdout
    finally:
        sudo(staging, name, f"sed -i '/^# drift test$/d' {NGINX_CONF}")
    # restored byte for byte: the in-sync state the first dry run saw
    assert sudo(staging, name, f"cat {NGINX_CONF}").stdout == original


def test_facts_describe_the_deployed_host(name):
    found = facts(name)
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert found["DeployedRelease"]["commit"] == head
    assert found["DeployedRelease"]["mode"] == "SAFE"
    assert found["RaveMode"] == {"recorded": "SAFE", "effective": "SAFE"}
    assert found["ProjectServices"]["webhook"]["active_state"] == "active"
    secrets = found["SecretsRecipientStatus"]
    assert secrets["encrypted_to_host"] is True
    assert secrets["service"] == "active/exited"
    assert secrets["secret_files"] >= 5
    cert = found["CertificateExpiry"]
    assert cert["present"] is True and cert["days_left"] > 0
    assert set(found["LastBackup"]) == {"timestamp", "age_seconds"}


def test_update_with_failed_validation_rolls_back_to_the_previous_state(staging, name):
    """A config-only update whose validation fails puts the host back exactly as it was."""
    marker = "# state before the update"
    sums = f"md5sum {NGINX_CONF} /etc/rave/release.json"
    original = sudo(staging, name, f"cat {NGINX_CONF}").stdout
    try:
        # the host differs from the checkout, so the update really changes something
        sudo(staging, name, f"echo '{marker}' >> {NGINX_CONF} && systemctl reload nginx")
        before = sudo(staging, name, sums).stdout
        result = rave_ops(
            "--limit", name, "update", "config", "--force-validation-failure", timeout=900
        )
        assert result.returncode == 1, result.stdout + result.stderr[-3000:]
        assert f"{name}: FAIL validation failed; rolled back; host valid after it" in (
            result.stdout
        )
        assert "rolling back" in result.stderr
        assert sudo(staging, name, sums).stdout == before
        assert unit_active(staging, name, "nginx")
    finally:
        sudo(staging, name, f"sed -i '/^{marker}$/d' {NGINX_CONF} && systemctl reload nginx")
    assert sudo(staging, name, f"cat {NGINX_CONF}").stdout == original


CCR_PACKAGE_JSON = "/opt/rave/ccr/node_modules/@musistudio/claude-code-router/package.json"
# a provider without a key (never called): CCR 2.x binds loopback only once one is configured
STUB_PROVIDERS = json.dumps(
    [{"name": "stub", "api_base_url": "https://llm.invalid/v1/chat/completions", "models": ["m"]}]
)


def ccr_state(staging, name: str) -> dict[str, str]:
    """What a CCR major update changes: version, its files' checksums, unit state, listeners."""
    package = sudo(staging, name, f"cat {CCR_PACKAGE_JSON}").stdout
    return {
        "version": json.loads(package)["version"] if package.strip() else "absent",
        "files": sudo(
            staging,
            name,
            "md5sum /etc/rave-ccr/settings.json /etc/systemd/system/rave-ccr.service; "
            "find /opt/rave/ccr -type f | sort | xargs md5sum | md5sum",
        ).stdout,
        "active": staging.ssh(name, "systemctl is-active rave-ccr").stdout.strip(),
        "listening": staging.ssh(name, "ss -Hltn 'sport = :3456'").stdout.split()[3:4],
    }


def ccr_settled(staging, name: str) -> bool:
    state = ccr_state(staging, name)
    return state["active"] == "active" and state["listening"] == ["127.0.0.1:3456"]


def test_major_update_that_fails_validation_is_rolled_back(staging, name):
    """CCR 2.0.0 without a provider listens on 0.0.0.0 (its own choice): the validation fails
    and the host is put back to the version and configuration it had."""
    wait_until(lambda: ccr_settled(staging, name), "the router to run", deadline=60)
    before = ccr_state(staging, name)
    assert before["version"] == CcrSettings().ccr_version
    result = rave_ops("--limit", name, "update", "major", "ccr", "--to", "2.0.0", timeout=1800)
    output = result.stdout + result.stderr[-4000:]
    assert result.returncode == 1, output
    assert f"{name}: FAIL validation failed; rolled back; host valid after it" in result.stdout
    assert "0.0.0.0:3456" in result.stdout, output  # the reason: a listener off loopback
    assert "rolling back ccr to the saved version" in result.stderr
    pinned = before["version"]
    assert f"ccr version {pinned} (before the update: {pinned})" in result.stdout
    assert "group_data" not in result.stdout  # nothing updated: nothing to pin
    assert ccr_state(staging, name) == before


def test_major_update_to_a_working_version_and_back(staging, name):
    """2.0.0 with a provider configured passes the validation; the major update back to the
    pinned version leaves the host as the checkout describes it."""
    wait_until(lambda: ccr_settled(staging, name), "the router to run", deadline=60)
    before = ccr_state(staging, name)
    pinned = CcrSettings().ccr_version
    try:
        result = rave_ops(
            "--limit",
            name,
            "update",
            "major",
            "ccr",
            "--to",
            "2.0.0",
            "--set",
            f"ccr_providers={STUB_PROVIDERS}",
            timeout=1800,
        )
        assert result.returncode == 0, result.stdout + result.stderr[-4000:]
        assert f"{name}: OK   updated and validated" in result.stdout
        assert "set ccr_version = '2.0.0' in group_data" in result.stdout
        updated = ccr_state(staging, name)
        assert updated["version"] == "2.0.0"
        assert updated["active"] == "active" and updated["listening"] == ["127.0.0.1:3456"]
        settings = json.loads(sudo(staging, name, "cat /etc/rave-ccr/settings.json").stdout)
        assert [p["name"] for p in settings["providers"]] == ["stub"]
        saved = sudo(staging, name, "ls /var/lib/rave-ops/pre-major/ccr 2>&1").stdout
        assert "No such file" in saved  # discarded after the validated update
    finally:
        back = rave_ops("--limit", name, "update", "major", "ccr", "--to", pinned, timeout=1800)
    assert back.returncode == 0, back.stdout + back.stderr[-4000:]
    assert f"{name}: OK   updated and validated" in back.stdout
    after = ccr_state(staging, name)
    assert after["version"] == pinned
    assert after["active"] == "active" and after["listening"] == ["127.0.0.1:3456"]
    # configuration as before; the package tree is a fresh npm install of the same version
    assert after["files"].splitlines()[:2] == before["files"].splitlines()[:2]
