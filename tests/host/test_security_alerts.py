"""Security alerting on a live staging host: failed SSH logins from the control machine reach
the health check's textfile metrics and fire SSHAuthFailureBurst in the host's Prometheus.

fail2ban may ban the control machine's address on the way (staging lists it in
fail2ban_ignore_addresses, but the test does not rely on that): every ban is lifted afterwards,
so later tests can still log in.
"""

from __future__ import annotations

import subprocess
import uuid

from rave import observability as obs
from tests.host.test_observability import api, host_settings, poll, scrape_seconds

ATTEMPTS = 12  # the alert's threshold is 10 within the window


def failed_logins(staging, name: str, attempts: int) -> list[int]:
    """ssh as a user the host does not have: one `Invalid user` line per attempt."""
    user = f"rave-probe-{uuid.uuid4().hex[:8]}"
    codes = []
    for _ in range(attempts):
        result = subprocess.run(
            [
                "ssh",
                "-F",
                str(staging.instance.ssh_config),
                "-l",
                user,
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=5",
                "-o",
                "ConnectionAttempts=1",
                name,
                "true",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        codes.append(result.returncode)
    return codes


def textfile_value(host, metric: str) -> float | None:
    """From the health check's files: its own, and fail2ban's (its unit's root step)."""
    text = host.check_output(
        f"cat {obs.TEXTFILE_DIR}/rave_healthcheck.prom {obs.TEXTFILE_DIR}/rave_fail2ban.prom"
    )
    for line in text.splitlines():
        if line.startswith(metric + " "):
            return float(line.split()[1])
    return None


def test_security_rules_are_loaded(host):
    groups = api(host, "/api/v1/rules")["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    for alert in (
        "SSHAuthFailureBurst",
        "Fail2banBanning",
        "HostValidationFailing",
        "UndeclaredPortListening",
        "BackupRepositoryOnHost",
    ):
        assert alert in loaded, alert


def test_failed_ssh_logins_fire_the_ssh_failure_alert(host, staging):
    name = host.check_output("hostname")
    settings = host_settings(host)
    try:
        codes = failed_logins(staging, name, ATTEMPTS)
        assert all(code != 0 for code in codes), codes  # not one got in
        host.check_output("systemctl start rave-healthcheck.service")
        failures = textfile_value(host, "rave_ssh_auth_failures_recent")
        assert failures is not None and failures >= ATTEMPTS, failures
        assert textfile_value(host, "rave_fail2ban_up") == 1
        # every port a deployed host listens on is declared by a component
        assert textfile_value(host, "rave_undeclared_listening_ports") == 0

        def fired():
            return [
                a
                for a in api(host, "/api/v1/alerts")["alerts"]
                if a["labels"].get("alertname") == "SSHAuthFailureBurst"
                and a["state"] in ("pending", "firing")
            ]

        # a scrape of the node exporter, then a rule evaluation (no `for`: it fires at once)
        alerts = poll("SSHAuthFailureBurst", fired, timeout=4 * scrape_seconds(settings) + 60)
        assert float(alerts[0]["value"]) >= ATTEMPTS
    finally:
        host.run("fail2ban-client unban --all")
    # the operator still gets in afterwards
    assert staging.ssh(name, "true").returncode == 0


def test_a_port_no_component_declares_fires_the_undeclared_port_alert(host):
    """A listener started behind the deploy's back (a debug server, a backdoor) is seen by the
    health check and raises UndeclaredPortListening; gone again once it stops."""
    settings = host_settings(host)
    port = 47000 + uuid.uuid4().int % 1000
    unit = f"rave-probe-listener-{port}"

    def alerts():
        return [
            a
            for a in api(host, "/api/v1/alerts")["alerts"]
            if a["labels"].get("alertname") == "UndeclaredPortListening"
            and a["labels"].get("port") == str(port)
        ]

    host.check_output(
        f"systemd-run --unit {unit} python3 -m http.server {port} "
        "--bind 127.0.0.1 --directory /var/empty"
    )
    try:
        poll(
            f"port {port} listening",
            lambda: host.socket(f"tcp://127.0.0.1:{port}").is_listening,
            timeout=30,
        )
        host.check_output("systemctl start rave-healthcheck.service")
        assert textfile_value(host, "rave_undeclared_listening_ports") == 1
        # `for: 10m`: pending is the rule matching the live series
        seen = poll("UndeclaredPortListening", alerts, timeout=4 * scrape_seconds(settings) + 60)
        assert seen[0]["state"] in ("pending", "firing")
    finally:
        host.run(f"systemctl stop {unit}")
    host.check_output("systemctl start rave-healthcheck.service")
    assert textfile_value(host, "rave_undeclared_listening_ports") == 0
    poll(
        "UndeclaredPortListening resolved",
        lambda: not alerts(),
        timeout=4 * scrape_seconds(settings) + 60,
    )
