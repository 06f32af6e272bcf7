"""rave-depaudit: audit the control side's Python dependencies; fail above a severity threshold.

    pip install pip-audit            # once, into the project's venv (not a dev extra: network)
    .venv/bin/rave-depaudit          # audits requirements.lock (--installed: this venv)

pip-audit finds the known vulnerabilities of every installed distribution (PyPI's advisory
data); their severity comes from OSV (the GitHub advisory's severity of the vulnerability or
of one of its aliases). The threshold and any accepted findings live in pyproject.toml:

    [tool.rave-depaudit]
    fail_on = "high"                  # critical | high | medium | low
    ignore = [{ id = "GHSA-xxxx-xxxx-xxxx", reason = "...", until = "2027-01-31" }]

A finding whose severity cannot be determined counts as "unknown" and always fails: an audit
that cannot rate a finding has not shown it harmless (accept it with an `ignore` entry, which
needs a reason and may expire). pip-audit and OSV need network: this is not part of CI.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
OSV_VULN_URL = "https://api.osv.dev/v1/vulns/{id}"
LEVELS = ("low", "medium", "high", "critical")
GHSA_LEVELS = {"LOW": "low", "MODERATE": "medium", "HIGH": "high", "CRITICAL": "critical"}


@dataclass(frozen=True)
class Policy:
    fail_on: str = "high"
    ignore: tuple[tuple[str, str, dt.date | None], ...] = ()  # (id, reason, until)

    def ignored(self, ids: set[str], today: dt.date) -> str | None:
        for ident, reason, until in self.ignore:
            if ident in ids and (until is None or today <= until):
                return reason
        return None

    def fails(self, severity: str) -> bool:
        if severity not in LEVELS:
            return True
        return LEVELS.index(severity) >= LEVELS.index(self.fail_on)


@dataclass(frozen=True)
class Finding:
    package: str
    version: str
    ident: str
    aliases: tuple[str, ...]
    fix_versions: tuple[str, ...]
    severity: str = "unknown"
    ignored: str | None = None


def load_policy(pyproject: Path = REPO_ROOT / "pyproject.toml") -> Policy:
    table = tomllib.loads(pyproject.read_text()).get("tool", {}).get("rave-depaudit", {})
    fail_on = table.get("fail_on", "high")
    if fail_on not in LEVELS:
        raise SystemExit(f"rave-depaudit: fail_on must be one of {', '.join(LEVELS)}")
    ignore = []
    for entry in table.get("ignore", []):
        if not entry.get("reason"):
            raise SystemExit(f"rave-depaudit: ignored {entry.get('id')} needs a reason")
        until = entry.get("until")
        ignore.append(
            (entry["id"], entry["reason"], dt.date.fromisoformat(str(until)) if until else None)
        )
    return Policy(fail_on=fail_on, ignore=tuple(ignore))


def parse_pip_audit(report: dict[str, Any]) -> list[Finding]:
    """Findings of `pip-audit --format json` (skipped distributions are not findings)."""
    findings = []
    for dependency in report.get("dependencies", []):
        for vuln in dependency.get("vulns", []):
            findings.append(
                Finding(
                    package=dependency["name"],
                    version=dependency.get("version", "?"),
                    ident=vuln["id"],
                    aliases=tuple(vuln.get("aliases", [])),
                    fix_versions=tuple(vuln.get("fix_versions", [])),
                )
            )
    return findings


def osv_severity(record: dict[str, Any]) -> str | None:
    level = (record.get("database_specific") or {}).get("severity")
    return GHSA_LEVELS.get(str(level).upper()) if level else None


def fetch_osv(ident: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(OSV_VULN_URL.format(id=ident), timeout=30) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def rate(finding: Finding, lookup: Callable[[str], dict[str, Any] | None] = fetch_osv) -> str:
    """The highest severity any of the finding's ids has in OSV; unknown when none says."""
    found = [s for ident in (finding.ident, *finding.aliases) if (s := _rated(ident, lookup))]
    return max(found, key=LEVELS.index) if found else "unknown"


def _rated(ident: str, lookup: Callable[[str], dict[str, Any] | None]) -> str | None:
    record = lookup(ident)
    return osv_severity(record) if record else None


def pip_audit_command(requirements: Path | None) -> list[str]:
    """pip-audit on the lock file (exact pins: no resolving) or, without one, on this venv."""
    command = [sys.executable, "-m", "pip_audit", "--format", "json", "--progress-spinner", "off"]
    if requirements is not None:
        command += ["--requirement", str(requirements), "--no-deps", "--disable-pip"]
    return command


def run_pip_audit(requirements: Path | None = None) -> dict[str, Any]:
    if requirements is not None and not requirements.is_file():
        raise SystemExit(f"rave-depaudit: {requirements} does not exist")
    command = pip_audit_command(requirements)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if "No module named pip_audit" in done.stderr:
        raise SystemExit("rave-depaudit: pip-audit is not installed (pip install pip-audit)")
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        raise SystemExit(f"rave-depaudit: pip-audit failed: {done.stderr.strip()[-500:]}") from None


def evaluate(
    findings: list[Finding],
    policy: Policy,
    lookup: Callable[[str], dict[str, Any] | None] = fetch_osv,
    today: dt.date | None = None,
) -> tuple[list[Finding], bool]:
    today = today or dt.date.today()
    rated = []
    for finding in findings:
        severity = rate(finding, lookup)
        reason = policy.ignored({finding.ident, *finding.aliases}, today)
        rated.append(Finding(**{**finding.__dict__, "severity": severity, "ignored": reason}))
    failed = any(f.ignored is None and policy.fails(f.severity) for f in rated)
    return rated, failed


def format_report(findings: list[Finding], policy: Policy, failed: bool) -> str:
    lines = [f"{'PACKAGE':20} {'VERSION':12} {'ID':22} {'SEVERITY':9} FIXED-IN / NOTE"]
    for f in sorted(findings, key=lambda f: (f.package, f.ident)):
        note = f"ignored: {f.ignored}" if f.ignored else ", ".join(f.fix_versions) or "-"
        lines.append(f"{f.package:20} {f.version:12} {f.ident:22} {f.severity:9} {note}")
    verdict = "FAIL" if failed else "ok"
    lines.append(f"{len(findings)} finding(s); fail_on={policy.fail_on}: {verdict}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rave-depaudit", description=__doc__.split("\n")[0])
    parser.add_argument("--pyproject", type=Path, default=REPO_ROOT / "pyproject.toml")
    parser.add_argument(
        "--requirements",
        type=Path,
        default=REPO_ROOT / "requirements.lock",
        help="the pinned distributions to audit (default: requirements.lock)",
    )
    parser.add_argument(
        "--installed", action="store_true", help="audit this venv instead of a lock file"
    )
    args = parser.parse_args(argv)
    policy = load_policy(args.pyproject)
    requirements = None if args.installed else args.requirements
    findings, failed = evaluate(parse_pip_audit(run_pip_audit(requirements)), policy)
    sys.stdout.write(format_report(findings, policy, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
