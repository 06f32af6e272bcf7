"""Drift detection: what a deploy would change on each host, from pyinfra's JSON dry run.

`pyinfra --dry --json INVENTORY deploy.py` prints the plan: every operation with the hosts on
which it would change something (`hosts_with_change`) and the hosts where it would run only if
an earlier operation changed (`hosts_with_conditional_change`, e.g. a restart after a config
upload). Drift is the first kind; the second follows from it and is listed separately.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class HostDrift:
    host: str
    changes: list[str] = field(default_factory=list)
    conditional: list[str] = field(default_factory=list)

    @property
    def drifted(self) -> bool:
        return bool(self.changes)


def parse_plan_output(stdout: str) -> dict[str, Any]:
    """The JSON document in a `pyinfra --json` run's stdout (anything else is ignored)."""
    for line in stdout.splitlines():
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict) and "plan" in data:
                return data
    start = stdout.find("{")
    if start >= 0:
        data = json.loads(stdout[start:])
        if isinstance(data, dict) and "plan" in data:
            return data
    raise ValueError("no JSON plan in pyinfra's output")


def drift_by_host(plan: dict[str, Any], hosts: list[str]) -> dict[str, HostDrift]:
    result = {name: HostDrift(name) for name in hosts}
    for op in plan.get("plan", []):
        name = op.get("name") or ", ".join(op.get("names", [])) or op.get("op_hash", "?")
        for host in op.get("hosts_with_change", []):
            result.setdefault(host, HostDrift(host)).changes.append(name)
        for host in op.get("hosts_with_conditional_change", []):
            result.setdefault(host, HostDrift(host)).conditional.append(name)
    return dict(sorted(result.items()))


def summary(drift: dict[str, HostDrift], limit: int = 10) -> str:
    lines = []
    for item in drift.values():
        if not item.drifted:
            lines.append(f"{item.host}: in sync (0 changes)")
            continue
        # conditional operations (restarts after a change, `_if=`) are left out: the dry run
        # lists every one of them, whether or not its condition would hold
        lines.append(f"{item.host}: DRIFT, a deploy would change {len(item.changes)} operation(s)")
        lines += [f"  - {name}" for name in item.changes[:limit]]
        if len(item.changes) > limit:
            lines.append(f"  ... and {len(item.changes) - limit} more")
    return "\n".join(lines)
