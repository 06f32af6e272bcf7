"""rave-vulnscan: the latest vulnerability findings of every host of an inventory, as one table.

    rave-vulnscan inventories/prod.py                 # latest findings of all hosts
    rave-vulnscan inventories/prod.py --scan-now      # run the scan on each host first
    rave-vulnscan inventories/staging.py --limit rave-staging-1 --min-severity high

Each host is reached over SSH with its inventory connection settings (as pyinfra would);
the host's own script prints its reports (`rave-vulnscan-scan --show`, needs sudo).
A host whose latest scan failed is listed below the table: its findings are unknown,
and the table shows its last successful scan instead (marked stale).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

SEVERITIES = ("critical", "high", "medium", "low", "negligible", "unknown")
UNIT = "rave-vulnscan.service"
SCRIPT = "/usr/local/sbin/rave-vulnscan-scan"
COLUMNS = ("HOST", "PACKAGE", "INSTALLED", "FIXED-IN", "SEVERITY", "ID")


@dataclass
class HostResult:
    host: str
    latest: dict[str, Any] | None = None
    last_success: dict[str, Any] | None = None
    error: str | None = None  # could not reach the host or read its reports
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SshTarget:
    name: str
    argv: tuple[str, ...]  # ssh ... user@host (the remote command is appended)


def ssh_target(name: str, data: dict[str, Any]) -> SshTarget:
    """ssh arguments from pyinfra connector data (ssh_hostname, ssh_user, ssh_key, ...)."""
    argv = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]
    if data.get("ssh_port"):
        argv += ["-p", str(data["ssh_port"])]
    if data.get("ssh_key"):
        argv += ["-i", str(data["ssh_key"])]
    if data.get("ssh_known_hosts_file"):
        argv += ["-o", f"UserKnownHostsFile={data['ssh_known_hosts_file']}"]
    if data.get("ssh_strict_host_key_checking"):
        argv += ["-o", f"StrictHostKeyChecking={data['ssh_strict_host_key_checking']}"]
    user = data.get("ssh_user")
    address = data.get("ssh_hostname") or name
    argv.append(f"{user}@{address}" if user else str(address))
    return SshTarget(name=name, argv=tuple(argv))


def inventory_targets(inventory_file: str, limit: Iterable[str] = ()) -> list[SshTarget]:
    import os

    from pyinfra.api import State
    from pyinfra.context import ctx_state
    from pyinfra_cli.inventory import make_inventory

    # pyinfra executes inventory files inside a State context, as its own CLI does
    state = State(check_for_changes=False)
    state.cwd = os.getcwd()
    ctx_state.set(state)
    inventory = make_inventory(inventory_file, cwd=state.cwd)
    wanted = set(limit)
    targets = []
    for host in inventory:
        if wanted and host.name not in wanted:
            continue
        data = {key: host.data.get(key) for key in _SSH_KEYS}
        targets.append(ssh_target(host.name, data))
    missing = wanted - {t.name for t in targets}
    if missing:
        raise SystemExit(f"rave-vulnscan: not in {inventory_file}: {', '.join(sorted(missing))}")
    return targets


_SSH_KEYS = (
    "ssh_hostname",
    "ssh_user",
    "ssh_port",
    "ssh_key",
    "ssh_known_hosts_file",
    "ssh_strict_host_key_checking",
)


def remote_command(scan_now: bool) -> str:
    show = f"sudo -n /usr/bin/python3 {SCRIPT} --show"
    if not scan_now:
        return show
    # `systemctl start` of a oneshot waits for the scan; a failed scan still shows its report
    return f'sudo -n systemctl start {UNIT}; echo "scan-exit=$?" >&2; {show}'


def fetch(target: SshTarget, scan_now: bool, timeout: float = 1800) -> HostResult:
    argv = [*target.argv, remote_command(scan_now)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return HostResult(target.name, error=f"ssh failed: {error}")
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        return HostResult(target.name, error=f"ssh {shlex.join(argv[-2:-1])}: {detail[0]}")
    return parse_show(target.name, done.stdout)


def parse_show(host: str, text: str) -> HostResult:
    try:
        shown = json.loads(text)
    except json.JSONDecodeError:
        return HostResult(host, error="the host's reports are not JSON (is the scan deployed?)")
    return HostResult(host, latest=shown.get("latest"), last_success=shown.get("last_success"))


def _when(ts: float | None) -> str:
    if not ts:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def rows_and_notes(
    results: list[HostResult], min_severity: str = "unknown"
) -> tuple[list[tuple[str, ...]], list[str]]:
    limit = SEVERITIES.index(min_severity) if min_severity != "unknown" else len(SEVERITIES)
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []
    for result in sorted(results, key=lambda r: r.host):
        if result.error:
            notes.append(f"{result.host}: UNREACHABLE — {result.error}")
            continue
        latest, success = result.latest, result.last_success
        stale = ""
        if latest is None:
            notes.append(f"{result.host}: no scan has run yet")
            continue
        if latest.get("status") != "ok":
            notes.append(
                f"{result.host}: latest scan FAILED at {_when(latest.get('started'))}: "
                f"{latest.get('error')}; findings unknown since the last success "
                f"({_when(success['started'] if success else None)})"
            )
            stale = " (stale)"
        if success is None:
            continue
        for tree in success.get("npm_trees", []):
            if tree.get("status") != "audited":
                notes.append(f"{result.host}: npm: {tree['status']} ({tree['detail']})")
        for finding in success.get("findings", []):
            rank = SEVERITIES.index(finding["severity"])
            if rank > limit:
                continue
            rows.append(
                (
                    result.host + stale,
                    finding["package"],
                    finding["installed"],
                    finding["fixed_in"] or "-",
                    finding["severity"],
                    finding["id"],
                )
            )
        if not success.get("findings"):
            notes.append(
                f"{result.host}: no findings (scan of {_when(success['started'])}, "
                f"data: {success.get('data', '?')})"
            )
    rows.sort(key=lambda r: (r[0], SEVERITIES.index(r[4]), r[1], r[5]))
    return rows, notes


def format_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines) + "\n"


def report(
    targets: list[SshTarget],
    scan_now: bool,
    min_severity: str,
    fetcher: Callable[[SshTarget, bool], HostResult] = fetch,
) -> tuple[str, int]:
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(targets)))) as pool:
        results = list(pool.map(lambda t: fetcher(t, scan_now), targets))
    rows, notes = rows_and_notes(results, min_severity)
    out = format_table(rows)
    if notes:
        out += "\n" + "\n".join(notes) + "\n"
    failed = any(r.error or r.latest is None or r.latest.get("status") != "ok" for r in results)
    return out, 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rave-vulnscan", description=__doc__.split("\n")[0].split(": ", 1)[1]
    )
    parser.add_argument("inventory", help="a pyinfra inventory file, e.g. inventories/prod.py")
    parser.add_argument("--scan-now", action="store_true", help="run the scan on each host first")
    parser.add_argument("--limit", action="append", default=[], help="only this host (repeatable)")
    parser.add_argument(
        "--min-severity",
        choices=SEVERITIES,
        default="unknown",
        help="hide findings less severe than this (default: show all)",
    )
    args = parser.parse_args(argv)
    targets = inventory_targets(args.inventory, args.limit)
    out, code = report(targets, args.scan_now, args.min_severity)
    sys.stdout.write(out)
    return code


if __name__ == "__main__":
    sys.exit(main())
