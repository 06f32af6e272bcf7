"""Plain-text tables, and a collector that lets a deploy file print ONE table for all hosts.

pyinfra runs a deploy file once per host (in parallel greenlets of one process); a file that
wants a cross-host report records its host's rows here, and the host that completes the set
prints the report.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

_lock = threading.Lock()
_collected: dict[str, dict[str, Any]] = {}


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in cells[1:]]
    return "\n".join(text.rstrip() for text in out)


def collect(report: str, host_name: str, value: Any, expected: int) -> dict[str, Any] | None:
    """Record one host's value; returns all values (by host) once `expected` hosts are in."""
    with _lock:
        bucket = _collected.setdefault(report, {})
        bucket[host_name] = value
        if len(bucket) >= expected:
            return dict(sorted(_collected.pop(report).items()))
    return None


def human_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "K", "M", "G"):
        if size < 1024 or unit == "G":
            return f"{size:.0f}{unit}" if unit in ("B", "K", "M") else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}G"


def human_age(since: int | None, now: float | None = None) -> str:
    if not since:
        return "-"
    seconds = int((now if now is not None else time.time()) - since)
    if seconds < 0:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"
