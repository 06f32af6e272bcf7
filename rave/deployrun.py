"""Run pyinfra as a subprocess and report what it did (tests, bench).

pyinfra 3.10's ``--json`` prints one JSON document on stdout after the run:
``{"plan": [...], "results": {"operations": [{"name", "success", "error", "no_change", ...}],
"totals": {...}, "failed_hosts": [...]}}`` where an operation's ``success`` lists the hosts on
which it *changed* something and ``no_change`` those where it did nothing. Logs go to stderr.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class OperationResult:
    name: str
    changed_hosts: tuple[str, ...]
    error_hosts: tuple[str, ...]
    unchanged_hosts: tuple[str, ...]


@dataclass(frozen=True)
class DeployResult:
    command: tuple[str, ...]
    returncode: int
    seconds: float
    stdout: str
    stderr: str
    operations: tuple[OperationResult, ...] = field(default=())
    failed_hosts: tuple[str, ...] = field(default=())
    parsed: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.parsed and not self.failed_hosts

    @property
    def changed(self) -> int:
        """Number of (operation, host) pairs that changed something."""
        return sum(len(op.changed_hosts) for op in self.operations)

    @property
    def errors(self) -> int:
        return sum(len(op.error_hosts) for op in self.operations)

    def changed_operations(self) -> list[str]:
        return [
            f"{op.name} on {', '.join(op.changed_hosts)}"
            for op in self.operations
            if op.changed_hosts
        ]

    def summary(self) -> str:
        head = f"pyinfra exit {self.returncode} in {self.seconds:.1f}s"
        if self.parsed:
            text = (
                f"{head}: {self.changed} changed, {self.errors} failed operation(s), "
                f"failed hosts: {list(self.failed_hosts) or 'none'}"
            )
        else:
            errors = [line.strip() for line in self.stderr.splitlines() if "rror" in line]
            text = f"{head}, no results printed; errors: {errors[-5:] or 'see the log'}"
        found = failures_from_log(self.stderr + "\n" + self.stdout)
        if found:
            text += "\nwhat failed (operation on host: error):\n" + "\n".join(
                f"  {line}" for line in found[:10]
            )
        return text

    def log_tail(self, lines: int = 60) -> str:
        """The end of pyinfra's log (stderr) and of whatever else it printed (not the JSON)."""
        other = [line for line in self.stdout.splitlines() if not line.startswith("{")]
        return "\n".join([*self.stderr.splitlines(), *other][-lines:])


_STARTING = re.compile(r"--> Starting operation: (?P<name>.*?)\s*$")
_HOST_ERROR = re.compile(
    r"^\s*\[(?P<host>[^\]]+)\] (?P<error>.*\b(?:[Ee]rror|Exception|failed)\b.*)$"
)


def failures_from_log(log: str) -> list[str]:
    """'<operation> on <host>: <error>' for each host error pyinfra printed, in order, from
    its log: the summary then says what broke, not only how many operations did."""
    found: list[str] = []
    operation = "(before any operation)"
    for line in log.splitlines():
        starting = _STARTING.search(line)
        if starting:
            operation = starting.group("name")
            continue
        error = _HOST_ERROR.match(line)
        if error:
            entry = f"{operation} on {error.group('host')}: {error.group('error').strip()[:300]}"
            if entry not in found:
                found.append(entry)
    return found


def parse_results(stdout: str) -> dict[str, Any] | None:
    """The last JSON document on stdout that carries run results."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            payload = json.loads(line)
        except ValueError:
            continue
        if isinstance(payload, dict) and isinstance(payload.get("results"), dict):
            return payload["results"]
    return None


def pyinfra_bin() -> str:
    candidate = Path(sys.executable).parent / "pyinfra"
    return str(candidate) if candidate.exists() else "pyinfra"


def run_deploy(
    inventory: str | Path = "inventories/staging.py",
    deploys: Sequence[str | Path] = ("deploy.py",),
    *,
    limit: str | None = None,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
    timeout: float = 3600,
) -> DeployResult:
    """Run `pyinfra -y --json INVENTORY DEPLOY...` and parse its results."""
    command = [pyinfra_bin(), "-y", "--json", str(inventory), *map(str, deploys)]
    if limit:
        command[3:3] = ["--limit", limit]
    command[3:3] = list(extra_args)
    started = time.monotonic()
    process = subprocess.run(
        command,
        cwd=cwd,
        env={**os.environ, "PYINFRA_PROGRESS": "off", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    seconds = time.monotonic() - started
    results = parse_results(process.stdout)
    operations: list[OperationResult] = []
    failed: tuple[str, ...] = ()
    if results is not None:
        for op in results.get("operations", []):
            operations.append(
                OperationResult(
                    name=str(op.get("name", "?")),
                    changed_hosts=tuple(op.get("success", [])),
                    error_hosts=tuple(op.get("error", [])),
                    unchanged_hosts=tuple(op.get("no_change", [])),
                )
            )
        failed = tuple(results.get("failed_hosts", []))
    return DeployResult(
        command=tuple(command),
        returncode=process.returncode,
        seconds=seconds,
        stdout=process.stdout,
        stderr=process.stderr,
        operations=tuple(operations),
        failed_hosts=failed,
        parsed=results is not None,
    )


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="run pyinfra and summarise the changes")
    parser.add_argument("inventory", nargs="?", default="inventories/staging.py")
    parser.add_argument("deploys", nargs="*", default=["deploy.py"])
    parser.add_argument("--limit")
    args = parser.parse_args(argv)
    result = run_deploy(args.inventory, args.deploys, limit=args.limit)
    for line in result.changed_operations():
        print(f"changed: {line}")
    print(result.summary())
    if not result.ok:
        print(result.log_tail(), file=sys.stderr)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
