"""Service management over the project's units (rave.components), shared by ops/service.py."""

from __future__ import annotations

import time
from typing import Any

from pyinfra.api.exceptions import PyinfraError

from rave.components import BY_NAME, COMPONENTS
from rave.ops.report import human_age, human_bytes, table


class NotInstalled(PyinfraError):
    """A requested component has no unit on the host (pyinfra prints it without a traceback)."""


# never stopped or restarted as part of "all": the operator's own way in
NOT_IN_BULK = frozenset({"sshd"})


def targets(services: dict[str, dict[str, Any]], requested: list[str], action: str) -> list[str]:
    """Components to act on: the requested ones, or every present one; in declaration order."""
    if requested:
        missing = [name for name in requested if not services.get(name, {}).get("present")]
        if missing and action != "logs":
            raise NotInstalled(f"not installed on this host: {', '.join(missing)}")
        chosen = [name for name in requested if name not in missing]
    else:
        chosen = [name for name, state in services.items() if state.get("present")]
        if action in ("stop", "restart"):
            chosen = [name for name in chosen if name not in NOT_IN_BULK]
    order = [c.name for c in COMPONENTS]
    return sorted(chosen, key=order.index)


def state_cell(state: dict[str, Any]) -> str:
    text = f"{state['active_state']}/{state['sub_state']}"
    if state.get("timer") and state.get("type") == "oneshot":
        # started by its timer (e.g. the backup): idle between runs is its normal state
        result = state.get("result") or "-"
        text += f", last {result}, {state['timer']} {state.get('timer_state') or '?'}"
    return text


def memory_cell(state: dict[str, Any]) -> str:
    current, limit = state.get("memory_current"), state.get("memory_max")
    if current is None and limit is None:
        return "-"
    used = human_bytes(current)
    if current is not None and state.get("memory_source") == "rss":
        used = "~" + used  # the processes' RSS: this host has no memory accounting
    if limit is None:
        return f"{used} / no limit"
    percent = f" ({100 * current // limit}%)" if current is not None and limit else ""
    return f"{used} / {limit_text(limit)}{percent}"


def limit_text(limit: int) -> str:
    return human_bytes(limit)


def status_rows(
    by_host: dict[str, dict[str, dict[str, Any]]], now: float | None = None
) -> list[list[str]]:
    now = time.time() if now is None else now
    rows = []
    for host_name, services in by_host.items():
        for name in (c.name for c in COMPONENTS):
            state = services.get(name)
            if not state or not state.get("present"):
                continue
            rows.append(
                [
                    host_name,
                    name,
                    state["unit"],
                    state_cell(state),
                    state["enabled"] or "-",
                    memory_cell(state),
                    human_age(state.get("active_since"), now),
                    str(state.get("restarts", 0)),
                ]
            )
    return rows


STATUS_HEADERS = ("HOST", "COMPONENT", "UNIT", "STATE", "ENABLED", "MEMORY", "STARTED", "RESTARTS")


def status_table(by_host: dict[str, dict[str, dict[str, Any]]], now: float | None = None) -> str:
    return table(STATUS_HEADERS, status_rows(by_host, now))


def unit_of(name: str) -> str:
    return f"{BY_NAME[name].unit}.service"
