"""Debug mode on a live staging host: one setting makes the receiver, nginx and the exporters
verbose and the host loud (metric, alert, banner), no secret reaches those logs, and turning it
off leaves the host's files exactly as a host that never ran in debug mode."""

from __future__ import annotations

import json
import uuid

from rave import observability as obs
from rave.deployrun import DeployResult, run_deploy
from tests.host.edge_support import client, github, hmac_secret, rows_for, values, wait_for
from tests.host.test_observability import api, host_settings, poll, scrape_seconds

DEBUG_ON = ("--data", "debug_mode=true")
BANNER = "DEBUG MODE IS ON"
NGINX_LOGS = ("/var/log/nginx/access.log", "/var/log/nginx/error.log")
VERBOSE_EXPORTERS = ("prometheus-node-exporter", "prometheus-postgres-exporter")
# every file the deploy manages lives here; the timers' own textfiles change by themselves
MANAGED = "/etc /opt/rave /usr/local /var/www/rave"


def managed_files(host) -> str:
    return host.check_output(
        f"find {MANAGED} -xdev -type f -exec sha256sum {{}} + | sort -k 2; "
        f"sha256sum {obs.DEBUG_MODE_TEXTFILE}"
    )


def debug_metric(host) -> float:
    text = host.check_output("curl -fsS --max-time 10 http://127.0.0.1:9100/metrics")
    values_ = [line.split()[1] for line in text.splitlines() if line.startswith("rave_debug_mode ")]
    assert len(values_) == 1, values_
    return float(values_[0])


def status_page(staging) -> str:
    with client(staging) as https:
        answer = https.get("/")
    assert answer.status_code == 200
    return answer.text


def cmdline(host, unit: str) -> str:
    pid = host.check_output(f"systemctl show -p MainPID --value {unit}")
    return host.check_output(f"tr '\\0' ' ' < /proc/{pid}/cmdline")


def firing(host, alertname: str) -> list[dict]:
    return [
        alert
        for alert in api(host, "/api/v1/alerts")["alerts"]
        if alert["labels"].get("alertname") == alertname and alert["state"] == "firing"
    ]


def deploy(*extra: str) -> DeployResult:
    result = run_deploy("inventories/staging.py", ("deploy.py",), extra_args=extra)
    assert result.ok, f"{result.summary()}\n{result.log_tail(60)}"
    return result


def log_sizes(host) -> dict[str, int]:
    return {path: int(host.check_output(f"stat -c %s {path}")) for path in NGINX_LOGS}


def written_since(host, sizes: dict[str, int]) -> str:
    return "\n".join(
        host.check_output(f"tail -c +{size + 1} {path}") for path, size in sizes.items()
    )


def journal_since(host, since: str, *units: str) -> str:
    """The units' journal from the host's clock reading `since` (epoch seconds) on. Not a cursor:
    lines one read of a service's stream brings in share a timestamp, and after a cursor some of
    them went missing."""
    selected = " ".join(f"-u {unit}" for unit in units)
    return host.check_output(f"journalctl --no-pager -o cat --since @{since} {selected}")


def test_debug_mode_is_loud_verbose_leaks_nothing_and_turns_off_without_a_trace(staging, host):
    settings = host_settings(host)
    deploy()  # the never-debug host this test compares against
    never_debug = managed_files(host)
    assert debug_metric(host) == 0
    assert BANNER not in status_page(staging)
    debug_since = host.check_output("date +%s.%N")
    try:
        first = deploy(*DEBUG_ON)
        assert first.changed_operations(), "debug mode on changed nothing"
        again = deploy(*DEBUG_ON)
        assert not again.changed_operations(), again.changed_operations()

        # loud: the metric, the banner on /, the alert
        assert debug_metric(host) == 1
        assert BANNER in status_page(staging)
        poll("DebugModeOn firing", lambda: firing(host, "DebugModeOn"),
             timeout=4 * scrape_seconds(settings) + 90)  # fmt: skip

        # verbose: nginx at info with the longer access line, the Go exporters at debug
        assert "error_log /var/log/nginx/error.log info;" in host.check_output("nginx -T 2>&1")
        for unit in VERBOSE_EXPORTERS:
            assert "--log.level=debug" in cmdline(host, unit), unit
        exporter_lines = host.check_output(
            "journalctl --no-pager -o cat -u prometheus-node-exporter "
            "-u prometheus-postgres-exporter --since -15min"
        )
        assert "level=debug" in exporter_lines

        # a signed delivery and a forged one, with a secret in the body: the receiver says what
        # it did, and nothing of the secrets, the signatures or the body reaches a log
        secret = hmac_secret(staging)
        canary = f"payload-secret-{uuid.uuid4().hex}"
        body = json.dumps({"password": canary, "ref": "refs/heads/debug"}).encode()
        signed = github(secret, body)
        forged = github(f"forged-{uuid.uuid4().hex}".encode(), body)
        since = host.check_output("date +%s.%N")
        sizes = log_sizes(host)
        with client(staging) as https:
            assert https.post("/webhook", content=body, headers=signed).status_code == 202
            assert https.post("/webhook", content=body, headers=forged).status_code == 401
        delivery = signed["X-GitHub-Delivery"]
        wait_for(lambda: rows_for(host, delivery) == 1)
        wait_for(lambda: "drained" in journal_since(host, since, "rave-webhook"))
        receiver = journal_since(host, since, "rave-webhook")
        assert f"accepted github delivery '{delivery}'" in receiver, receiver
        assert "refused a github delivery: 401" in receiver, receiver
        nginx = written_since(host, sizes)
        assert "rid=" in nginx and '"POST /webhook HTTP/1.1" 202' in nginx, nginx
        # the exporters' and nginx's journals from the start of debug mode (their start-up too)
        journals = journal_since(host, debug_since, "nginx", *VERBOSE_EXPORTERS)
        everything = receiver + nginx + journals
        secrets = values(staging)
        leaks = {
            "HMAC secret": secret.decode(),
            "signature header": signed["X-Hub-Signature-256"],
            "forged signature header": forged["X-Hub-Signature-256"],
            "payload secret": canary,
            "signature hex": signed["X-Hub-Signature-256"].split("=", 1)[1],
            "postgres exporter password": secrets.postgres_exporter_password,
            "webhook database password": secrets.postgres_webhook_password,
        }
        for what, value in leaks.items():
            assert value not in everything, f"{what} in a debug log"
    finally:
        deploy()  # off again, whatever failed above

    # off: exactly the never-debug host, and quiet
    after = managed_files(host)
    assert after == never_debug, "\n".join(
        sorted(set(after.splitlines()) ^ set(never_debug.splitlines()))
    )
    assert debug_metric(host) == 0
    assert BANNER not in status_page(staging)
    for unit in VERBOSE_EXPORTERS:
        assert "--log.level" not in cmdline(host, unit), unit
    poll("DebugModeOn resolved", lambda: not firing(host, "DebugModeOn"),
         timeout=4 * scrape_seconds(settings) + 90)  # fmt: skip
