import importlib
import importlib.metadata
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import paramiko
import pytest
from pyinfra.api import util as pyinfra_util

from rave import speedups
from rave.speedups import (
    apply,
    cached_global_arguments,
    cached_inventory_arguments,
    disable_nagle,
    operation_order_from_frames,
)


def _transport_socket_nodelay() -> int:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        transport = paramiko.Transport(client)
        try:
            return transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            transport.close()
            peer.close()


def test_paramiko_transports_get_tcp_nodelay() -> None:
    disable_nagle()
    assert _transport_socket_nodelay() != 0


def test_patch_is_applied_once() -> None:
    disable_nagle()
    patched = paramiko.Transport.__init__
    disable_nagle()
    assert paramiko.Transport.__init__ is patched


def test_gevent_sockets_get_tcp_nodelay_too() -> None:
    from gevent import socket as gevent_socket

    disable_nagle()
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = gevent_socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        transport = paramiko.Transport(client)
        try:
            assert transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            transport.close()
            peer.close()


class _State:
    def __init__(self, deploy_filename: str | None) -> None:
        self.current_deploy_filename = deploy_filename
        self.current_op_file_number = 7


def _orders(state: _State) -> tuple[list[int], list[int]]:
    return pyinfra_util.get_operation_order_from_stack(state), operation_order_from_frames(state)


def _nested(state: _State, depth: int) -> tuple[list[int], list[int]]:
    if depth == 0:
        return _orders(state)
    return _nested(state, depth - 1)


def test_operation_order_matches_pyinfras_own() -> None:
    for deploy_filename in (__file__, None, "/nonexistent/deploy.py"):
        for depth in (0, 3):
            original, fast = _nested(_State(deploy_filename), depth)
            assert fast == original
            # the test's own frames are in the list unless the deploy file is not on the stack
            assert len(fast) > depth or deploy_filename == "/nonexistent/deploy.py"


def test_operation_order_is_used_by_pyinfras_operations() -> None:
    apply()
    module = importlib.import_module("pyinfra.api.operation")
    assert module.get_operation_order_from_stack is operation_order_from_frames


def test_global_arguments_are_computed_once_and_unchanged() -> None:
    from typing import get_type_hints

    from pyinfra.api import arguments, facts

    cached_global_arguments()
    expected = list(get_type_hints(arguments.AllArguments).items())
    assert arguments.all_global_arguments() == expected
    assert facts.all_global_arguments is arguments.all_global_arguments  # type: ignore[attr-defined]
    first = arguments.all_global_arguments()
    first.clear()  # a caller's copy: the next caller still gets every argument
    assert arguments.all_global_arguments() == expected


def _inventory_state() -> tuple[Any, Any]:
    from pyinfra.api import Config, Inventory, State

    inventory = Inventory(
        (
            [
                ("plain", {}),
                ("sudo-env", {"_sudo": True, "_env": {"LANG": "C"}, "other": 1}),
            ],
            {"_use_sudo_login": True},
        ),
    )
    return inventory, State(inventory, Config())


def test_inventory_arguments_are_read_once_with_the_same_result() -> None:
    from pyinfra.api import arguments

    inventory, state = _inventory_state()
    cached_inventory_arguments()
    patched = arguments.pop_global_arguments
    unpatched = patched.__wrapped__  # pyinfra's own
    for name in ("plain", "sudo-env"):
        host = inventory.get_host(name)
        for kwargs in ({}, {"_sudo": False}, {"_env": {"A": "1"}, "_timeout": 5}):
            assert patched(state, host, dict(kwargs)) == unpatched(state, host, dict(kwargs))
    values, _ = patched(state, inventory.get_host("sudo-env"), {})
    assert values["_sudo"] is True and values["_use_sudo_login"] is True
    values["_env"]["LANG"] = "changed"  # a copy per call, as host.data gives
    again, _ = patched(state, inventory.get_host("sudo-env"), {})
    assert again["_env"] == {"LANG": "C"}


def test_data_set_during_the_run_is_seen() -> None:
    from pyinfra.api import arguments

    inventory, state = _inventory_state()
    cached_inventory_arguments()
    host = inventory.get_host("plain")
    assert arguments.pop_global_arguments(state, host, {})[0]["_sudo"] is False
    host.data._sudo = True  # override data: looked up as pyinfra does
    assert arguments.pop_global_arguments(state, host, {})[0]["_sudo"] is True


def test_pyinfra_is_pinned_to_the_version_the_patches_are_for() -> None:
    repo = Path(__file__).resolve().parents[2]
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    (pin,) = [r for r in project["dependencies"] if r.startswith("pyinfra")]
    assert pin.split("#")[0].strip() == f"pyinfra=={speedups.PYINFRA_VERSION}"
    assert f"pyinfra=={speedups.PYINFRA_VERSION}\n" in (repo / "requirements.lock").read_text()
    assert importlib.metadata.version("pyinfra") == speedups.PYINFRA_VERSION


def test_another_pyinfra_version_is_refused_at_import() -> None:
    speedups.check_pyinfra_version(speedups.PYINFRA_VERSION)
    with pytest.raises(ImportError, match=r"patches pyinfra 3\.10\.0's internals.* 3\.11\.0"):
        speedups.check_pyinfra_version("3.11.0")
    fake = (
        "import importlib.metadata as m; real = m.version; "
        "m.version = lambda name: '3.11.0' if name == 'pyinfra' else real(name); "
        "import rave.speedups"
    )
    done = subprocess.run([sys.executable, "-c", fake], capture_output=True, text=True)
    assert done.returncode != 0
    assert "ImportError: rave patches pyinfra 3.10.0's internals" in done.stderr
    assert "but pyinfra 3.11.0 is installed" in done.stderr
