#!/usr/bin/python3
"""RAVE host vulnerability scan (Python 3 standard library only; runs from rave-vulnscan.timer).

Matches the installed Debian packages against a vulnerability data source (the Debian Security
Tracker's JSON, or Trivy), audits the configured npm trees with `npm audit`, and writes
atomically under the state directory:

  report.json        the latest run (status "ok" or "failed"; a failed run carries no findings)
  last-success.json  the latest successful run (what the operator command shows)
  findings.sarif     SARIF 2.1.0 of the latest run (a failed run has no `results` at all)
  <textfile_dir>/rave_vulnscan.prom   metrics for node exporter's textfile collector

A data source that cannot be fetched or parsed is a FAILED scan (rave_vulnscan_scan_ok 0, a
journal message, exit status 1), never "no vulnerabilities".

Configuration: /etc/rave/vulnscan.json (rendered by the deploy). For tests and operators,
RAVE_VULNSCAN_DATA_FILE / RAVE_VULNSCAN_DATA_URL in the environment override the data source,
RAVE_VULNSCAN_NPM_AUDIT_FILE the npm audit data (empty: ask the registry).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CONFIG_PATH = "/etc/rave/vulnscan.json"
TOOL_NAME = "rave-vulnscan"
TOOL_VERSION = "1.0.0"
METRICS_FILE = "rave_vulnscan.prom"
SARIF_SCHEMA = (
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
)
TRACKER_URL = "https://security-tracker.debian.org/tracker/"

# normalised severities, most severe first
SEVERITIES = ("critical", "high", "medium", "low", "negligible", "unknown")
SARIF_LEVEL = {
    "critical": "error",
    "high": "error",
    "medium": "warning",
    "low": "note",
    "negligible": "note",
    "unknown": "warning",
}
# GitHub-style numeric severity (CVSS-like) for SARIF consumers that sort by it
SECURITY_SEVERITY = {
    "critical": "9.5",
    "high": "8.0",
    "medium": "5.5",
    "low": "2.0",
    "negligible": "0.1",
    "unknown": "5.0",
}
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9.+~:-]+$")
LOOPBACK = ("localhost", "127.0.0.1", "::1")
_WS = re.compile(r"[ \t\n\r]*")


class ScanError(Exception):
    """The scan could not be completed: reported as a failed scan, never as a clean one."""


def log(message: str) -> None:
    # stderr of a systemd service goes to the journal (SyslogIdentifier=rave-vulnscan)
    sys.stderr.write(f"{message}\n")
    sys.stderr.flush()


def utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- installed packages


def installed_packages(
    dpkg_query: str = "dpkg-query", dpkg: str = "dpkg"
) -> dict[str, dict[str, Any]]:
    """Installed source packages: {source: {"version": source version, "binaries": [...]}}."""
    fmt = "${db:Status-Abbrev}\\t${binary:Package}\\t${source:Package}\\t${source:Version}\\n"
    try:
        out = subprocess.run(
            [dpkg_query, "-W", f"-f={fmt}"], check=True, capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        raise ScanError(f"cannot list the installed packages: {error}") from error
    return parse_dpkg_query(out, dpkg)


def parse_dpkg_query(out: str, dpkg: str = "dpkg") -> dict[str, dict[str, Any]]:
    sources: dict[str, dict[str, Any]] = {}
    for line in out.splitlines():
        parts = line.split("\t")
        # status abbreviation: desired action, then state; "i" = installed ("ii", "hi", ...)
        if len(parts) != 4 or len(parts[0]) < 2 or parts[0][1] != "i":
            continue
        _, binary, source, version = parts
        entry = sources.setdefault(source, {"versions": set(), "binaries": []})
        entry["binaries"].append(binary)
        entry["versions"].add(version)
    if not sources:
        raise ScanError("dpkg-query listed no installed packages")
    for entry in sources.values():
        entry["binaries"].sort()
        versions = sorted(entry.pop("versions"))
        # binaries of one source at different versions (mid-upgrade): judge by the oldest
        oldest = versions[0]
        for version in versions[1:]:
            if compare_lt([(version, oldest)], dpkg=dpkg)[(version, oldest)]:
                oldest = version
        entry["version"] = oldest
    return sources


def compare_lt(pairs: list[tuple[str, str]], dpkg: str = "dpkg") -> dict[tuple[str, str], bool]:
    """Is a < b (Debian version order)? `dpkg --compare-versions`, all pairs in one shell."""
    unique = sorted(set(pairs))
    if not unique:
        return {}
    for a, b in unique:
        for version in (a, b):
            if not VERSION_PATTERN.match(version):
                raise ScanError(f"invalid Debian version {version!r} in the data")
    script = (
        'while IFS= read -r a && IFS= read -r b; do "$0" --compare-versions "$a" lt "$b"; '
        'echo "$?"; done'
    )
    stdin = "".join(f"{a}\n{b}\n" for a, b in unique)
    try:
        out = subprocess.run(
            ["sh", "-c", script, dpkg],
            input=stdin,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError) as error:
        raise ScanError(f"dpkg --compare-versions failed: {error}") from error
    if len(out) != len(unique) or any(code not in ("0", "1") for code in out):
        raise ScanError(f"dpkg --compare-versions gave unexpected answers: {out[:10]}")
    return {pair: code == "0" for pair, code in zip(unique, out, strict=True)}


# --------------------------------------------------------------------------- Debian tracker


def iter_top_level(text: str) -> Iterator[tuple[str, Any]]:
    """(key, value) of a top-level JSON object, one value at a time (the tracker is ~70 MB)."""
    decoder = json.JSONDecoder()
    try:
        i = _WS.match(text, 0).end()  # type: ignore[union-attr]
        if text[i] != "{":
            raise ScanError("the data is not a JSON object")
        i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
        if text[i] == "}":
            return
        while True:
            key, i = decoder.raw_decode(text, i)
            if not isinstance(key, str):
                raise ScanError("the data's top-level keys are not strings")
            i = _WS.match(text, i).end()  # type: ignore[union-attr]
            if text[i] != ":":
                raise ScanError(f"malformed JSON at character {i}")
            i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
            value, i = decoder.raw_decode(text, i)
            yield key, value
            i = _WS.match(text, i).end()  # type: ignore[union-attr]
            if text[i] == ",":
                i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
                continue
            if text[i] == "}":
                if text[i + 1 :].strip():
                    raise ScanError("trailing data after the JSON object")
                return
            raise ScanError(f"malformed JSON at character {i}")
    except IndexError as error:
        raise ScanError("the data ends early (truncated download?)") from error
    except json.JSONDecodeError as error:
        raise ScanError(f"the data is not valid JSON: {error}") from error


def tracker_severity(urgency: str, scope: str | None) -> str:
    """Debian urgency → normalised severity; a remotely exploitable 'high' counts as critical."""
    urgency = (urgency or "").rstrip("*").strip().lower()
    if urgency == "high":
        return "critical" if scope == "remote" else "high"
    if urgency in ("medium", "low"):
        return urgency
    if urgency == "unimportant":
        return "negligible"
    return "unknown"  # "not yet assigned", "end-of-life", or missing


def tracker_findings(
    text: str,
    installed: dict[str, dict[str, Any]],
    release: str,
    dpkg: str = "dpkg",
) -> list[dict[str, Any]]:
    """Findings from the tracker's JSON ({source: {CVE: {..., releases: {release: {...}}}}})."""
    candidates: list[dict[str, Any]] = []
    packages_seen = 0
    release_seen = False
    for source, issues in iter_top_level(text):
        packages_seen += 1
        if not isinstance(issues, dict):
            raise ScanError(f"tracker entry {source!r} is not an object")
        wanted = source in installed
        for issue_id, issue in issues.items():
            if not isinstance(issue, dict) or not isinstance(issue.get("releases", {}), dict):
                raise ScanError(f"tracker entry {source}/{issue_id} is malformed")
            state = issue.get("releases", {}).get(release)
            if state is None:
                continue
            release_seen = True
            if not wanted or not isinstance(state, dict):
                continue
            status = state.get("status")
            fixed = state.get("fixed_version")
            if status == "open":
                fixed = None
            elif status == "resolved" and isinstance(fixed, str) and fixed:
                pass
            else:
                continue  # undetermined, or resolved without a version (not affected)
            candidates.append(
                {
                    "source": source,
                    "id": issue_id,
                    "fixed": fixed,
                    "severity": tracker_severity(str(state.get("urgency", "")), issue.get("scope")),
                    "description": str(issue.get("description") or "")[:500],
                }
            )
    if packages_seen == 0:
        raise ScanError("the data source lists no packages (empty or truncated data)")
    if not release_seen:
        raise ScanError(f"the data source has no entries for release {release!r}")

    pairs = [(installed[c["source"]]["version"], c["fixed"]) for c in candidates if c["fixed"]]
    older = compare_lt(pairs, dpkg=dpkg)
    findings = []
    for c in candidates:
        package = installed[c["source"]]
        if c["fixed"] is not None and not older[(package["version"], c["fixed"])]:
            continue
        findings.append(
            {
                "ecosystem": "debian",
                "id": c["id"],
                "package": c["source"],
                "binaries": package["binaries"],
                "installed": package["version"],
                "fixed_in": c["fixed"],
                "fixable": c["fixed"] is not None,
                "severity": c["severity"],
                "description": c["description"],
                "url": TRACKER_URL + c["id"],
                "location": "/var/lib/dpkg/status",
            }
        )
    return findings


def fetch(url: str, proxy: str | None, timeout: float) -> str:
    if urllib.parse.urlsplit(url).hostname in LOOPBACK:
        proxy = None  # the host's own mirror: never through the egress proxy
    handlers: list[urllib.request.BaseHandler] = [
        urllib.request.ProxyHandler({"http": proxy, "https": proxy} if proxy else {})
    ]
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(url, headers={"User-Agent": f"{TOOL_NAME}/{TOOL_VERSION}"})
    try:
        with opener.open(request, timeout=timeout) as response:
            data = response.read()
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise ScanError(f"cannot fetch {url}: {error}") from error
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ScanError(f"{url} is not UTF-8 text: {error}") from error


def load_data(config: dict[str, Any]) -> tuple[str, str]:
    """(text, description of where it came from)."""
    data_file = config.get("data_file")
    if data_file:
        try:
            return Path(data_file).read_text(encoding="utf-8"), data_file
        except (OSError, UnicodeDecodeError) as error:
            raise ScanError(f"cannot read the data file {data_file}: {error}") from error
    url = config["data_url"]
    return fetch(url, config.get("proxy"), float(config.get("timeout_seconds", 300))), url


# --------------------------------------------------------------------------- Trivy


TRIVY_SEVERITY = {
    "CRITICAL": "critical",
    "HIGH": "high",
    "MEDIUM": "medium",
    "LOW": "low",
    "UNKNOWN": "unknown",
}


def trivy_findings(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Findings from `trivy rootfs --format json` output."""
    if not isinstance(report, dict) or "Results" not in report:
        raise ScanError("trivy's output has no Results")
    findings = []
    for result in report.get("Results") or []:
        for vuln in result.get("Vulnerabilities") or []:
            fixed = vuln.get("FixedVersion") or None
            findings.append(
                {
                    "ecosystem": "debian" if result.get("Class") == "os-pkgs" else "other",
                    "id": vuln["VulnerabilityID"],
                    "package": vuln.get("PkgName", "?"),
                    "binaries": [vuln.get("PkgName", "?")],
                    "installed": vuln.get("InstalledVersion", "?"),
                    "fixed_in": fixed,
                    "fixable": fixed is not None,
                    "severity": TRIVY_SEVERITY.get(str(vuln.get("Severity")).upper(), "unknown"),
                    "description": str(vuln.get("Title") or vuln.get("Description") or "")[:500],
                    "url": vuln.get("PrimaryURL") or TRACKER_URL + vuln["VulnerabilityID"],
                    "location": result.get("Target", "/"),
                }
            )
    return findings


def run_trivy(config: dict[str, Any]) -> list[dict[str, Any]]:
    trivy = config.get("trivy", {})
    command = [
        trivy.get("command", "trivy"),
        "rootfs",
        "--scanners",
        "vuln",
        "--pkg-types",
        "os",
        "--format",
        "json",
        "--quiet",
        "--cache-dir",
        os.path.join(config["state_dir"], "trivy-cache"),
        "--timeout",
        f"{int(config.get('timeout_seconds', 300))}s",
    ]
    if trivy.get("db_repository"):
        command += ["--db-repository", trivy["db_repository"]]
    command.append("/")
    env = dict(os.environ)
    if config.get("proxy"):
        env.update(HTTPS_PROXY=config["proxy"], HTTP_PROXY=config["proxy"])
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    except OSError as error:
        raise ScanError(f"cannot run trivy: {error}") from error
    if done.returncode != 0:
        raise ScanError(f"trivy failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    try:
        return trivy_findings(json.loads(done.stdout))
    except json.JSONDecodeError as error:
        raise ScanError(f"trivy's output is not JSON: {error}") from error


# --------------------------------------------------------------------------- npm


NPM_SEVERITY = {
    "critical": "critical",
    "high": "high",
    "moderate": "medium",
    "low": "low",
    "info": "negligible",
}


def npm_findings(tree: str, audit: dict[str, Any]) -> list[dict[str, Any]]:
    """Findings from `npm audit --json` (npm 7+ format)."""
    if "error" in audit:
        error = audit["error"]
        summary = error.get("summary") if isinstance(error, dict) else error
        raise ScanError(f"npm audit failed in {tree}: {summary or audit.get('message', '?')}")
    if not isinstance(audit.get("vulnerabilities"), dict):
        if audit.get("message"):  # npm 9 (bookworm) on a registry that refuses the audit
            raise ScanError(f"npm audit failed in {tree}: {audit['message']}")
        raise ScanError(f"npm audit output for {tree} has no vulnerabilities object")
    findings = []
    for name, vuln in sorted(audit["vulnerabilities"].items()):
        advisories = [via for via in vuln.get("via", []) if isinstance(via, dict)]
        if not advisories:
            continue  # only vulnerable through a dependency, reported there
        installed = "?"
        for node in vuln.get("nodes", []):
            try:
                manifest = json.loads((Path(tree) / node / "package.json").read_text())
                installed = manifest.get("version", "?")
                break
            except (OSError, ValueError):
                continue
        fix = vuln.get("fixAvailable")
        fixed_in = None
        if isinstance(fix, dict) and fix.get("name") == name:
            fixed_in = fix.get("version")
        elif fix is True:
            fixed_in = "(npm audit fix)"
        for via in advisories:
            ident = str(via.get("url", "")).rsplit("/", 1)[-1] or f"npm-{via.get('source')}"
            findings.append(
                {
                    "ecosystem": "npm",
                    "id": ident,
                    "package": name,
                    "binaries": [name],
                    "installed": installed,
                    "fixed_in": fixed_in,
                    "fixable": bool(fix),
                    "severity": NPM_SEVERITY.get(str(via.get("severity")), "unknown"),
                    "description": str(via.get("title", ""))[:500],
                    "url": via.get("url", ""),
                    "location": str(Path(tree) / "package-lock.json"),
                }
            )
    return findings


def run_npm_audit(config: dict[str, Any], tree: str) -> dict[str, Any]:
    env = dict(os.environ)
    if config.get("proxy"):
        env.update(npm_config_https_proxy=config["proxy"], npm_config_proxy=config["proxy"])
    env.setdefault("npm_config_cache", os.path.join(config["state_dir"], "npm-cache"))
    command = [config.get("npm_command", "npm"), "audit", "--json", "--omit=dev"]
    try:
        done = subprocess.run(
            command, cwd=tree, capture_output=True, text=True, env=env, check=False
        )
    except OSError as error:
        raise ScanError(f"npm audit in {tree} failed: {error}") from error
    try:
        audit = json.loads(done.stdout)
    except json.JSONDecodeError as error:
        # no JSON at all: npm did not get to the registry (e.g. node killed by the sandbox)
        said = " ".join(done.stderr.split())[-300:] or "nothing on stderr"
        raise ScanError(
            f"npm audit in {tree} printed no JSON (exit {done.returncode}): {said}"
        ) from error
    if not isinstance(audit, dict):
        raise ScanError(f"npm audit in {tree} printed {type(audit).__name__}, not an object")
    return audit


def read_audit_file(path: str) -> dict[str, Any]:
    """`npm audit --json` output kept in a file: staging, whose registry refuses audits."""
    try:
        audit = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ScanError(f"cannot read the npm audit data {path}: {error}") from error
    if not isinstance(audit, dict):
        raise ScanError(f"the npm audit data {path} is not an object")
    return audit


def lock_packages(lock: Path) -> int:
    """How many packages the tree's package-lock.json installs (what `npm audit` looked at)."""
    try:
        packages = json.loads(lock.read_text()).get("packages", {})
    except (OSError, ValueError, AttributeError) as error:
        raise ScanError(f"cannot read {lock}: {error}") from error
    return sum(1 for path in packages if path)  # "" is the tree's own package.json


def audit_npm(config: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Audit each configured npm tree; an absent tree is reported explicitly ("no npm tree")."""
    findings: list[dict[str, Any]] = []
    trees: list[dict[str, Any]] = []
    configured = config.get("npm_trees") or []
    if not configured:
        trees.append({"path": "", "status": "no npm tree", "detail": "no npm trees configured"})
    for tree in configured:
        lock = Path(tree) / "package-lock.json"
        if not lock.is_file():
            trees.append(
                {"path": tree, "status": "no npm tree", "detail": f"{lock} does not exist"}
            )
            continue
        audit_file = config.get("npm_audit_file")
        audit = read_audit_file(audit_file) if audit_file else run_npm_audit(config, tree)
        found = npm_findings(tree, audit)
        findings += found
        packages = lock_packages(lock)
        trees.append(
            {
                "path": tree,
                "status": "audited",
                "detail": f"{packages} packages, {len(found)} findings"
                + (f" (audit data from {audit_file}, not the registry)" if audit_file else ""),
                "packages": packages,
            }
        )
    return findings, trees


# --------------------------------------------------------------------------- outputs


def finding_key(finding: dict[str, Any]) -> str:
    return f"{finding['ecosystem']}/{finding['package']}/{finding['id']}"


def sort_findings(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(
        findings,
        key=lambda f: (SEVERITIES.index(f["severity"]), f["package"], f["id"]),
    )


def sarif_log(report: dict[str, Any]) -> dict[str, Any]:
    invocation: dict[str, Any] = {
        "executionSuccessful": report["status"] == "ok",
        "startTimeUtc": utc(report["started"]),
        "endTimeUtc": utc(report["finished"]),
    }
    run: dict[str, Any] = {
        "tool": {
            "driver": {
                "name": TOOL_NAME,
                "version": TOOL_VERSION,
                "informationUri": TRACKER_URL,
                "rules": [],
            }
        },
        "invocations": [invocation],
        "properties": {"host": report["host"], "source": report["source"]},
    }
    if report["status"] != "ok":
        invocation["toolExecutionNotifications"] = [
            {"level": "error", "message": {"text": f"scan failed: {report['error']}"}}
        ]
        return {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}
    rules: list[dict[str, Any]] = []
    rule_index: dict[str, int] = {}
    results = []
    for finding in report["findings"]:
        if finding["id"] not in rule_index:
            rule_index[finding["id"]] = len(rules)
            rule: dict[str, Any] = {
                "id": finding["id"],
                "shortDescription": {"text": finding["description"] or finding["id"]},
                "properties": {
                    "security-severity": SECURITY_SEVERITY[finding["severity"]],
                    "tags": ["security", "vulnerability", finding["ecosystem"]],
                },
            }
            if finding["url"]:
                rule["helpUri"] = finding["url"]
            rules.append(rule)
        fixed = finding["fixed_in"] or "no fix available yet"
        results.append(
            {
                "ruleId": finding["id"],
                "ruleIndex": rule_index[finding["id"]],
                "level": SARIF_LEVEL[finding["severity"]],
                "message": {
                    "text": (
                        f"{finding['package']} {finding['installed']} is affected by "
                        f"{finding['id']} ({finding['severity']}); fixed in: {fixed}"
                    )
                },
                "locations": [
                    {
                        "physicalLocation": {
                            "artifactLocation": {"uri": "file://" + finding["location"]}
                        },
                        "logicalLocations": [
                            {"name": finding["package"], "kind": "module"},
                        ],
                    }
                ],
                "partialFingerprints": {"rave/finding": finding_key(finding)},
                "properties": {
                    "package": finding["package"],
                    "installed": finding["installed"],
                    "fixedIn": finding["fixed_in"],
                    "severity": finding["severity"],
                    "fixable": finding["fixable"],
                    "new": finding.get("new", False),
                },
            }
        )
    run["tool"]["driver"]["rules"] = rules
    run["results"] = results
    return {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}


def metrics_text(
    last_success: dict[str, Any] | None, last_run: float, ok: bool, source: str
) -> str:
    lines = [
        "# HELP rave_vulnscan_scan_ok 1 if the latest scan succeeded, 0 if it failed.",
        "# TYPE rave_vulnscan_scan_ok gauge",
        f'rave_vulnscan_scan_ok{{source="{source}"}} {1 if ok else 0}',
        "# HELP rave_vulnscan_last_run_timestamp_seconds Start of the latest scan (ok or not).",
        "# TYPE rave_vulnscan_last_run_timestamp_seconds gauge",
        f"rave_vulnscan_last_run_timestamp_seconds {last_run:.0f}",
    ]
    if last_success is None:
        # never succeeded: no findings metrics at all (absent is not "no vulnerabilities")
        return "\n".join(lines) + "\n"
    counts = {(s, f): 0 for s in SEVERITIES for f in ("true", "false")}
    new = dict.fromkeys(SEVERITIES, 0)
    for finding in last_success["findings"]:
        counts[(finding["severity"], "true" if finding["fixable"] else "false")] += 1
        if finding.get("new"):
            new[finding["severity"]] += 1
    lines += [
        "# HELP rave_vulnscan_last_success_timestamp_seconds Start of the latest successful scan.",
        "# TYPE rave_vulnscan_last_success_timestamp_seconds gauge",
        f"rave_vulnscan_last_success_timestamp_seconds {last_success['started']:.0f}",
        "# HELP rave_vulnscan_findings Vulnerabilities found by the latest successful scan.",
        "# TYPE rave_vulnscan_findings gauge",
    ]
    lines += [
        f'rave_vulnscan_findings{{fixable="{f}",severity="{s}"}} {n}'
        for (s, f), n in counts.items()
    ]
    lines += [
        "# HELP rave_vulnscan_new_findings Findings of the latest successful scan that the "
        "successful scan before it did not have.",
        "# TYPE rave_vulnscan_new_findings gauge",
    ]
    lines += [f'rave_vulnscan_new_findings{{severity="{s}"}} {n}' for s, n in new.items()]
    return "\n".join(lines) + "\n"


def atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
            os.fchmod(handle.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- main


def scan(config: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(findings, details); raises ScanError when any part could not be scanned."""
    details: dict[str, Any] = {}
    source = config["source"]
    if source == "debian-tracker":
        installed = installed_packages(
            config.get("dpkg_query", "dpkg-query"), config.get("dpkg", "dpkg")
        )
        text, origin = load_data(config)
        details["data"] = origin
        details["installed_source_packages"] = len(installed)
        findings = tracker_findings(
            text, installed, config["release"], dpkg=config.get("dpkg", "dpkg")
        )
        del text
    elif source == "trivy":
        details["data"] = config.get("trivy", {}).get("db_repository") or "trivy default"
        findings = run_trivy(config)
    else:
        raise ScanError(f"unknown source {source!r}")
    npm, trees = audit_npm(config)
    details["npm_trees"] = trees
    return findings + npm, details


def load_config(path: str) -> dict[str, Any]:
    config = json.loads(Path(path).read_text(encoding="utf-8"))
    if os.environ.get("RAVE_VULNSCAN_DATA_FILE"):
        config["data_file"] = os.environ["RAVE_VULNSCAN_DATA_FILE"]
    if os.environ.get("RAVE_VULNSCAN_DATA_URL"):
        config["data_url"] = os.environ["RAVE_VULNSCAN_DATA_URL"]
        config["data_file"] = None
    if "RAVE_VULNSCAN_NPM_AUDIT_FILE" in os.environ:  # empty: ask the registry after all
        config["npm_audit_file"] = os.environ["RAVE_VULNSCAN_NPM_AUDIT_FILE"] or None
    return config


def run(config: dict[str, Any], now: float | None = None) -> int:
    state = Path(config["state_dir"])
    started = time.time() if now is None else now
    previous = read_json(state / "last-success.json")
    report: dict[str, Any] = {
        "tool": TOOL_NAME,
        "version": TOOL_VERSION,
        "host": config.get("host") or os.uname().nodename,
        "source": config["source"],
        "release": config.get("release"),
        "started": started,
    }
    try:
        findings, details = scan(config)
    except ScanError as error:
        report.update(status="failed", error=str(error), finished=time.time())
        report["last_success"] = previous["started"] if previous else None
        log(f"{TOOL_NAME}: scan FAILED: {error}")
        ok = False
        last_success = previous
    else:
        seen = {finding_key(f) for f in previous["findings"]} if previous else set()
        for finding in findings:
            finding["new"] = finding_key(finding) not in seen
        findings = sort_findings(findings)
        report.update(status="ok", findings=findings, finished=time.time(), **details)
        ok = True
        last_success = report
    report_text = json.dumps(report, indent=1, sort_keys=True) + "\n"
    atomic_write(state / "report.json", report_text)
    atomic_write(state / "findings.sarif", json.dumps(sarif_log(report), indent=1) + "\n")
    if ok:
        atomic_write(state / "last-success.json", report_text)
    atomic_write(
        Path(config["textfile_dir"]) / METRICS_FILE,
        metrics_text(last_success, started, ok, config["source"]),
    )
    if ok:
        by = {s: sum(1 for f in report["findings"] if f["severity"] == s) for s in SEVERITIES}
        summary = ", ".join(f"{n} {s}" for s, n in by.items() if n) or "none"
        new = sum(1 for f in report["findings"] if f["new"])
        trees = "; ".join(
            f"{t['path'] or '-'}: {t['status']} ({t['detail']})" for t in report["npm_trees"]
        )
        log(f"{TOOL_NAME}: scan ok, findings: {summary} ({new} new); npm: {trees}")
        return 0
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rave-vulnscan-scan", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=CONFIG_PATH)
    parser.add_argument(
        "--show", action="store_true", help="print the latest report and last success as JSON"
    )
    args = parser.parse_args(argv)
    config = load_config(args.config)
    if args.show:
        state = Path(config["state_dir"])
        shown = {
            "latest": read_json(state / "report.json"),
            "last_success": read_json(state / "last-success.json"),
        }
        sys.stdout.write(json.dumps(shown) + "\n")
        return 0
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
