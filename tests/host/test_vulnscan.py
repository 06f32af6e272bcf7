"""Vulnerability scanning on a live staging host, through the real unit and its sandbox.

The data source is overridden with a runtime drop-in (/run/systemd/..., gone at reboot and
removed at the end, so the final re-deploy sees no change): a small file in the Debian
Security Tracker's format marks the installed openssh as vulnerable, then no longer does; a
closed loopback port stands in for an unreachable tracker.
"""

from __future__ import annotations

import json
import re
import shlex
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from rave.components import component

ROOT = Path(__file__).resolve().parents[2]
SARIF_SCHEMA = ROOT / "tests" / "data" / "sarif-schema-2.1.0.json"
UNIT = "rave-vulnscan.service"
STATE = "/var/lib/rave/vulnscan"
PROM_FILE = "/var/lib/prometheus/node-exporter/rave_vulnscan.prom"
TEST_DIR = "/run/rave-vulnscan-test"
DROPIN_DIR = "/run/systemd/system/rave-vulnscan.service.d"
DROPIN = f"{DROPIN_DIR}/zz-test-data.conf"
CVE = "CVE-2099-4711"
PROMETHEUS = "http://127.0.0.1:9090"
NODE_EXPORTER = "http://127.0.0.1:9100/metrics"
CRITICAL = {"severity": "critical", "fixable": "true"}


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 240, every: float = 3) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def sh(host, command: str, check: bool = True):
    with host.sudo():
        result = host.run(command)
    if check:
        assert result.rc == 0, f"{command}: rc={result.rc} {result.stderr}"
    return result


def put(host, path: str, text: str) -> None:
    sh(host, f"install -d -m 755 {shlex.quote(str(Path(path).parent))}")
    sh(host, f"printf %s {shlex.quote(text)} > {shlex.quote(path)}")


def idle(host) -> None:
    """No scan running (the deploy may have started one): start would join it, not rerun."""
    wait_for(
        "rave-vulnscan.service to be idle",
        lambda: (
            sh(host, f"systemctl is-active {UNIT}", check=False).stdout.strip()
            in ("inactive", "failed")
        ),
        timeout=900,
    )


def scan_with(host, environment: str) -> int:
    idle(host)
    put(host, DROPIN, f"[Service]\nEnvironment={environment}\n")
    sh(host, "systemctl daemon-reload")
    return sh(host, f"systemctl start {UNIT}", check=False).rc


def tracker(openssh_issues: dict[str, Any]) -> str:
    """The tracker's JSON format: {source: {issue: {..., releases: {release: {...}}}}}."""
    return json.dumps(
        {
            "openssh": openssh_issues,
            "rave-not-installed": {
                "CVE-2099-0001": {
                    "scope": "remote",
                    "releases": {"bookworm": {"status": "open", "urgency": "high"}},
                }
            },
        }
    )


def vulnerable_issue(fixed: str) -> dict[str, Any]:
    return {
        CVE: {
            "description": "RAVE host test: openssh marked vulnerable",
            "scope": "remote",
            "releases": {
                "bookworm": {
                    "status": "resolved",
                    "fixed_version": fixed,
                    "urgency": "high",
                    "repositories": {"bookworm": fixed},
                }
            },
        }
    }


def read_json(host, path: str) -> dict[str, Any]:
    return json.loads(sh(host, f"cat {path}").stdout)


SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")


def sample_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in the exposition format, whatever the label order."""
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if not match or match["name"] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match["value"])
    return None


def textfile_metric(host, name: str, **labels: str) -> float | None:
    return sample_value(sh(host, f"cat {PROM_FILE}").stdout, name, **labels)


def exporter_metric(host, name: str, **labels: str) -> float | None:
    return sample_value(sh(host, f"curl -fsS {NODE_EXPORTER}").stdout, name, **labels)


def prometheus(host, path: str, **params: str) -> Any:
    query = urllib.parse.urlencode(params)
    out = sh(host, f"curl -fsS {shlex.quote(f'{PROMETHEUS}{path}?{query}')}").stdout
    return json.loads(out)["data"]


def prom_value(host, expr: str) -> float | None:
    result = prometheus(host, "/api/v1/query", query=expr)["result"]
    return float(result[0]["value"][1]) if result else None


def firing(host, alertname: str) -> bool:
    alerts = prometheus(host, "/api/v1/alerts")["alerts"]
    return any(a["labels"]["alertname"] == alertname and a["state"] == "firing" for a in alerts)


@pytest.fixture(scope="module")
def scan_host(host):
    sh(host, f"install -d -m 755 {TEST_DIR}")
    yield host
    # leave the host as deployed: no test drop-in, and a successful scan of clean data last
    try:
        put(host, f"{TEST_DIR}/clean.json", tracker({}))
        scan_with(host, f"RAVE_VULNSCAN_DATA_FILE={TEST_DIR}/clean.json")
    finally:
        sh(host, f"rm -rf {DROPIN} {TEST_DIR}", check=False)
        sh(host, "systemctl daemon-reload", check=False)


def test_timer_is_enabled_daily_with_a_random_delay(host):
    timer = host.service("rave-vulnscan.timer")
    assert timer.is_enabled
    assert timer.is_running
    shown = sh(host, "systemctl show rave-vulnscan.timer -p TimersCalendar -p RandomizedDelayUSec")
    assert "OnCalendar=daily" in shown.stdout or "*-*-* 00:00:00" in shown.stdout
    assert "RandomizedDelayUSec=0" not in shown.stdout


def test_the_scan_runs_sandboxed_without_capabilities(host):
    props = sh(
        host,
        f"systemctl show {UNIT} -p ProtectSystem -p CapabilityBoundingSet -p NoNewPrivileges "
        "-p MemoryMax -p ReadWritePaths",
    ).stdout
    assert "ProtectSystem=strict" in props
    assert "CapabilityBoundingSet=\n" in props
    assert "NoNewPrivileges=yes" in props
    assert "ReadWritePaths=/var/lib/rave/vulnscan /var/lib/prometheus/node-exporter" in props


def test_a_vulnerable_package_shows_everywhere_and_clears(scan_host):
    host = scan_host
    installed = sh(host, "dpkg-query -W -f='${source:Version}' openssh-server").stdout.strip()
    assert installed, "openssh-server is not installed"
    fixed = installed + "+rave1"  # sorts after the installed version
    put(host, f"{TEST_DIR}/vulnerable.json", tracker(vulnerable_issue(fixed)))
    put(host, f"{TEST_DIR}/clean.json", tracker(vulnerable_issue(installed)))
    findings, new = "rave_vulnscan_findings", "rave_vulnscan_new_findings"
    critical_expr = 'rave_vulnscan_findings{severity="critical",fixable="true"}'

    # a clean scan first, so that the vulnerable one is "new" whatever ran before
    assert scan_with(host, f"RAVE_VULNSCAN_DATA_FILE={TEST_DIR}/clean.json") == 0
    assert scan_with(host, f"RAVE_VULNSCAN_DATA_FILE={TEST_DIR}/vulnerable.json") == 0

    report = read_json(host, f"{STATE}/report.json")
    assert report["status"] == "ok"
    (finding,) = [f for f in report["findings"] if f["id"] == CVE]
    assert finding["package"] == "openssh"
    assert "openssh-server" in finding["binaries"]
    assert (finding["installed"], finding["fixed_in"]) == (installed, fixed)
    assert finding["severity"] == "critical"
    assert finding["new"] is True

    sarif = read_json(host, f"{STATE}/findings.sarif")
    jsonschema.Draft4Validator(json.loads(SARIF_SCHEMA.read_text())).validate(sarif)
    assert CVE in {r["ruleId"] for r in sarif["runs"][0]["results"]}

    assert textfile_metric(host, findings, **CRITICAL) == 1
    assert textfile_metric(host, new, severity="critical") == 1
    assert textfile_metric(host, "rave_vulnscan_scan_ok", source="debian-tracker") == 1
    wait_for(
        "node exporter to serve the finding",
        lambda: exporter_metric(host, findings, **CRITICAL) == 1,
    )
    wait_for("Prometheus to scrape the finding", lambda: prom_value(host, critical_expr) == 1)
    wait_for(
        "RaveVulnscanNewCriticalFinding to fire",
        lambda: firing(host, "RaveVulnscanNewCriticalFinding"),
    )

    # the data no longer lists openssh as vulnerable: everything clears
    assert scan_with(host, f"RAVE_VULNSCAN_DATA_FILE={TEST_DIR}/clean.json") == 0
    report = read_json(host, f"{STATE}/report.json")
    assert report["status"] == "ok"
    assert not [f for f in report["findings"] if f["id"] == CVE]
    sarif = read_json(host, f"{STATE}/findings.sarif")
    jsonschema.Draft4Validator(json.loads(SARIF_SCHEMA.read_text())).validate(sarif)
    assert CVE not in {r["ruleId"] for r in sarif["runs"][0]["results"]}
    assert textfile_metric(host, findings, **CRITICAL) == 0
    assert textfile_metric(host, new, severity="critical") == 0
    wait_for(
        "node exporter to serve the cleared finding",
        lambda: exporter_metric(host, findings, **CRITICAL) == 0,
    )
    wait_for("Prometheus to see the finding cleared", lambda: prom_value(host, critical_expr) == 0)
    wait_for(
        "RaveVulnscanNewCriticalFinding to resolve",
        lambda: not firing(host, "RaveVulnscanNewCriticalFinding"),
    )


def test_the_routers_npm_tree_is_audited_and_its_packages_counted(scan_host):
    """The scan audits the directory the router is installed in (its declaration in
    rave/components.py), and the report counts the packages of its package-lock.json."""
    host = scan_host
    tree = component("ccr").npm_tree
    assert tree
    lock = read_json(host, f"{tree}/package-lock.json")
    installed = [path for path in lock["packages"] if path]
    assert "node_modules/@musistudio/claude-code-router" in installed
    put(host, f"{TEST_DIR}/clean.json", tracker({}))
    assert scan_with(host, f"RAVE_VULNSCAN_DATA_FILE={TEST_DIR}/clean.json") == 0
    report = read_json(host, f"{STATE}/report.json")
    assert report["status"] == "ok", report.get("error")
    (audited,) = [t for t in report["npm_trees"] if t["path"] == tree]
    assert audited["status"] == "audited", audited
    assert audited["packages"] == len(installed) > 10


def test_npm_audit_runs_inside_the_scans_sandbox(scan_host):
    """Without the staging sample the scan asks the registry with node inside the unit's
    sandbox: it reaches the registry (whose answer decides), it is not killed before printing
    anything (node without @pkey dies with SIGSYS: every scan failed on empty output)."""
    host = scan_host
    put(host, f"{TEST_DIR}/clean.json", tracker({}))
    rc = scan_with(
        host,
        f'"RAVE_VULNSCAN_DATA_FILE={TEST_DIR}/clean.json" "RAVE_VULNSCAN_NPM_AUDIT_FILE="',
    )
    report = read_json(host, f"{STATE}/report.json")
    if rc == 0:  # a registry that answers audits
        (audited,) = [t for t in report["npm_trees"] if t["path"] == component("ccr").npm_tree]
        assert audited["status"] == "audited" and "not the registry" not in audited["detail"]
    else:  # staging's registry refuses the audit endpoint: the scan says so
        assert report["status"] == "failed"
        assert "npm audit failed in /opt/rave/ccr: 405" in report["error"], report["error"]
        assert "printed no JSON" not in report["error"]


def test_an_unreachable_source_is_a_failed_scan(scan_host):
    host = scan_host
    since = sh(host, "date -u '+%Y-%m-%d %H:%M:%S'").stdout.strip()
    # a closed port on the host's own loopback: connection refused, like an unreachable tracker
    rc = scan_with(host, "RAVE_VULNSCAN_DATA_URL=http://127.0.0.1:9/tracker/data/json")
    assert rc != 0, "a scan without data must fail"
    assert host.service(UNIT).is_running is False
    assert sh(host, f"systemctl is-failed {UNIT}", check=False).stdout.strip() == "failed"

    report = read_json(host, f"{STATE}/report.json")
    assert report["status"] == "failed"
    assert "cannot fetch http://127.0.0.1:9/tracker/data/json" in report["error"]
    assert "findings" not in report
    sarif = read_json(host, f"{STATE}/findings.sarif")
    jsonschema.Draft4Validator(json.loads(SARIF_SCHEMA.read_text())).validate(sarif)
    assert sarif["runs"][0]["invocations"][0]["executionSuccessful"] is False
    assert "results" not in sarif["runs"][0]

    ok = "rave_vulnscan_scan_ok"
    assert textfile_metric(host, ok, source="debian-tracker") == 0
    journal = sh(host, f"journalctl -u {UNIT} --since {shlex.quote(since)} --no-pager -o cat")
    assert "rave-vulnscan: scan FAILED: cannot fetch" in journal.stdout
    wait_for(
        "node exporter to serve scan_ok 0",
        lambda: exporter_metric(host, ok, source="debian-tracker") == 0,
    )
    wait_for("Prometheus to see the failed scan", lambda: prom_value(host, ok) == 0)
    wait_for("RaveVulnscanScanFailing to fire", lambda: firing(host, "RaveVulnscanScanFailing"))
