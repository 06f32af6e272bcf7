"""Two costs of pyinfra 3.10 that a no-change run pays per command and per operation.

TCP_NODELAY for every paramiko connection (pyinfra's and testinfra's): paramiko leaves
Nagle's algorithm on. An SSH exec round trip is a few small writes, so each
one waits for the peer's delayed ACK: about 40 ms per command. pyinfra runs one command per
fact (no cache in pyinfra 3), so a no-change deploy of ~500 facts spent ~20 s waiting.
Measured on a staging host: 49 ms per `true` with Nagle, 8 ms without.
"""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.metadata
import socket
import sys
import weakref
from typing import Any

import paramiko
import pyinfra
from pyinfra.api import util as pyinfra_util

# the pyinfra these patches are written against (its internals: State, util, the operation
# order); pyproject.toml pins the same version, tests/unit/test_speedups.py checks both
PYINFRA_VERSION = "3.10.0"


def check_pyinfra_version(found: str) -> None:
    if found != PYINFRA_VERSION:
        raise ImportError(
            f"rave patches pyinfra {PYINFRA_VERSION}'s internals (rave/speedups.py, config.py), "
            f"but pyinfra {found} is installed: install the pinned version "
            "(`make venv`: pip install -c requirements.lock), or check the patches against "
            f"{found} and move PYINFRA_VERSION and pyproject.toml's pin together"
        )


check_pyinfra_version(importlib.metadata.version("pyinfra"))

_MARK = "_rave_tcp_nodelay"


def disable_nagle() -> None:
    """Patch paramiko.Transport once so that its TCP socket sends small packets at once."""
    original = paramiko.Transport.__init__
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def init(self: paramiko.Transport, sock: Any, *args: Any, **kwargs: Any) -> None:
        original(self, sock, *args, **kwargs)
        tcp: Any = self.sock
        # pyinfra's sockets are gevent's (not socket.socket subclasses); a ProxyCommand or a
        # jump host's channel has no TCP family: nothing to tune there
        if getattr(tcp, "family", None) in (socket.AF_INET, socket.AF_INET6):
            tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    setattr(init, _MARK, True)
    paramiko.Transport.__init__ = init  # type: ignore[method-assign]


def operation_order_from_frames(state: Any) -> list[int]:
    """pyinfra's get_operation_order_from_stack without inspect.stack().

    pyinfra orders operations by the line numbers of the deploy code's call stack. It reads
    them with inspect.stack(), which loads the source context of every frame: ~2 s of CPU
    per host for ~200 operations (a tenth of it with 10 hosts on one core). The frames'
    own filename and line number give the same list; tests/unit/test_speedups.py compares.
    """
    frames = []
    frame = sys._getframe(1)
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back  # type: ignore[assignment]
    frames.reverse()

    start = 0
    if state.current_deploy_filename:
        # as pyinfra: from the outermost frame of the deploy file; none (not found) is empty
        start = next(
            (
                index
                for index, candidate in enumerate(frames)
                if candidate.f_code.co_filename == state.current_deploy_filename
            ),
            len(frames),
        )
    line_numbers = [state.current_op_file_number] if pyinfra.is_cli else []
    for candidate in frames[start:]:
        if candidate.f_code.co_filename.startswith(pyinfra_util.PYINFRA_INSTALL_DIR):
            continue
        line_numbers.append(candidate.f_lineno)
    return line_numbers


def fast_operation_order() -> None:
    # the module, not pyinfra.api.operation (the package re-exports the decorator under it)
    module = importlib.import_module("pyinfra.api.operation")
    module.get_operation_order_from_stack = operation_order_from_frames  # type: ignore[attr-defined]


def cached_global_arguments() -> None:
    """pyinfra evaluates the type hints of its global-argument TypedDict for every operation
    and fact (typing.get_type_hints: ~0.5 ms a call, ~0.25 s of CPU per host per run). The
    TypedDict is fixed, so the list is computed once."""
    module = importlib.import_module("pyinfra.api.arguments")
    original = module.all_global_arguments
    if getattr(original, _MARK, False):
        return
    hints = original()

    def all_global_arguments() -> list[tuple[str, type]]:
        return list(hints)  # a copy: callers may not share the list

    setattr(all_global_arguments, _MARK, True)
    module.all_global_arguments = all_global_arguments  # type: ignore[attr-defined]
    facts = importlib.import_module("pyinfra.api.facts")
    facts.all_global_arguments = all_global_arguments  # type: ignore[attr-defined]


class _InventoryArguments:
    """The global arguments (`_sudo`, `_env`, ...) a host's inventory data sets, as host.data
    answers them (each read a copy, as HostData does)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __getattr__(self, key: str) -> Any:
        try:
            return copy.copy(self._values[key])
        except KeyError:
            raise AttributeError(key) from None


class _HostWithInventoryArguments:
    """What pop_global_arguments reads of a host: its data and the current @deploy kwargs."""

    def __init__(self, host: Any, data: _InventoryArguments) -> None:
        self.data = data
        self.current_deploy_kwargs = host.current_deploy_kwargs


def cached_inventory_arguments() -> None:
    """pyinfra looks every global argument up in host.data for every operation and fact: ~30
    keys, each walking override, host, group and global data (and raising AttributeError for
    the keys nobody set). That was most of the control side's CPU per host (~0.2 s per host of
    220 operations). Inventory data is fixed once the inventory is loaded, so each host's
    values are read once. Hosts whose data a deploy overrides at run time (host.data.x = ...)
    or that run inside a @deploy with data defaults are looked up as before."""
    module = importlib.import_module("pyinfra.api.arguments")
    original = module.pop_global_arguments
    if getattr(original, _MARK, False):
        return
    per_host: weakref.WeakKeyDictionary[Any, _InventoryArguments] = weakref.WeakKeyDictionary()

    def pop_global_arguments(state: Any, host: Any, kwargs: dict[str, Any]) -> Any:
        data = host.data
        if data.override_datas or host.current_deploy_data:
            return original(state, host, kwargs)
        if host not in per_host:
            sentinel = object()
            values = {key: getattr(data, key, sentinel) for key, _ in module.all_global_arguments()}
            per_host[host] = _InventoryArguments(
                {key: value for key, value in values.items() if value is not sentinel}
            )
        return original(state, _HostWithInventoryArguments(host, per_host[host]), kwargs)

    setattr(pop_global_arguments, _MARK, True)
    pop_global_arguments.__wrapped__ = original  # type: ignore[attr-defined]
    module.pop_global_arguments = pop_global_arguments  # type: ignore[attr-defined]
    for name in ("pyinfra.api.operation", "pyinfra.api.deploy", "pyinfra.api.facts"):
        importlib.import_module(name).pop_global_arguments = pop_global_arguments  # type: ignore[attr-defined]


def apply() -> None:
    disable_nagle()
    fast_operation_order()
    cached_global_arguments()
    cached_inventory_arguments()
