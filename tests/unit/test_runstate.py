"""rave.runstate: facts asked once per run until the host changes, batched by the plan.

The shell commands of the batched facts run for real against temporary trees (getent, stat,
sha1sum); systemctl and dpkg answers are canned, in the formats those tools print.
"""

from __future__ import annotations

import pwd
from pathlib import Path
from typing import Any

from pyinfra.facts.deb import DebPackages
from pyinfra.facts.server import Groups
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

from rave import runstate
from rave.deploykit import _account_holds, _packages, _service, _user, ensure_group
from rave.runstate import Account, ChangeTracker, ExistingUsers, PathStates, UnitStates
from tests.unit.fakehost import FakeHost, run_fact


class Meta:
    def __init__(self, commands: list[str] | None) -> None:
        self._commands = commands

    def is_complete(self) -> bool:
        return self._commands is not None

    @property
    def executed(self) -> bool:
        return bool(self._commands)


class OpData:
    def __init__(self, commands: list[str] | None) -> None:
        self.operation_meta = Meta(commands)


def finish_op(fake: FakeHost, op_hash: str, commands: list[str] | None) -> None:
    """What pyinfra does around an operation, as far as the tracker sees it."""
    ops = fake.state.__dict__.setdefault("ops", {})
    ops[op_hash] = OpData(commands)
    fake.state.get_op_data_for_host = lambda host, op: ops[op]  # type: ignore[attr-defined]
    for handler in fake.state.callback_handlers:
        handler.operation_host_start(fake.state, fake, op_hash)


def fact_names(fake: FakeHost) -> list[str]:
    return [name for name, _ in fake.asked]


def test_planned_paths_are_asked_in_one_command(tmp_path: Path) -> None:
    paths = [str(tmp_path / f"f{k}") for k in range(5)]
    for path in paths[:3]:
        Path(path).write_text(path)
    with FakeHost().active() as fake:
        for path in paths:
            runstate.plan("path", path)
        states = [runstate.path_state(path) for path in paths]
    assert fact_names(fake) == ["PathStates"]
    assert [s["kind"] if s else None for s in states] == ["file"] * 3 + [None, None]


def test_paths_planned_before_the_asked_one_are_not_fetched(tmp_path: Path) -> None:
    """Their operations ran already, or were skipped (an _if): nobody will ask for them."""
    paths = [str(tmp_path / f"f{k}") for k in range(4)]
    with FakeHost().active() as fake:
        for path in paths:
            runstate.plan("path", path)
        runstate.path_state(paths[2])
    assert [kwargs["paths"] for _, kwargs in fake.asked] == [(paths[2], paths[3])]


def test_a_batch_holds_at_most_batch_paths(tmp_path: Path) -> None:
    paths = [str(tmp_path / f"f{k}") for k in range(runstate.BATCH + 5)]
    with FakeHost().active() as fake:
        for path in paths:
            runstate.plan("path", path)
        for path in paths:
            runstate.path_state(path)
    sizes = [len(kwargs["paths"]) for _, kwargs in fake.asked]
    assert sizes == [runstate.BATCH, 5]


def test_answers_are_asked_again_once_an_operation_changed_the_host(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("old")
    with FakeHost().active() as fake:
        runstate.plan("path", str(path))
        runstate.plan("path", str(path))
        first = runstate.path_state(str(path))
        finish_op(fake, "op1", [])  # ran nothing: answers stay
        finish_op(fake, "op2", [])
        assert runstate.path_state(str(path)) == first
        assert fact_names(fake) == ["PathStates"]
        path.write_text("new")
        finish_op(fake, "op3", ["echo new > f"])
        finish_op(fake, "op4", [])  # op3 is complete now: it ran a command
        second = runstate.path_state(str(path))
    assert fact_names(fake) == ["PathStates", "PathStates"]
    assert first and second and first["sha1"] != second["sha1"]


def test_an_unfinished_operation_counts_as_a_change(tmp_path: Path) -> None:
    with FakeHost().active() as fake:
        runstate.cached("groups", lambda: fake.get_fact(Groups))
        finish_op(fake, "outer", None)  # e.g. a nested operation's parent
        finish_op(fake, "inner", [])
        runstate.cached("groups", lambda: fake.get_fact(Groups))
    assert fact_names(fake) == ["Groups", "Groups"]


def test_first_asked_during_an_operation_tracks_that_operation() -> None:
    """The operation was already running when the tracker was registered (no start seen)."""
    with FakeHost({Groups: lambda: ["adm"]}).active() as fake:
        fake.executing_op_hash = "installs-things"
        runstate.cached("groups", lambda: fake.get_fact(Groups))  # registers the tracker
        fake.executing_op_hash = None
        ops = {"installs-things": OpData(["apt-get install x"]), "next": OpData([])}
        fake.state.get_op_data_for_host = lambda host, op: ops[op]  # type: ignore[attr-defined]
        for handler in fake.state.callback_handlers:
            handler.operation_host_start(fake.state, fake, "next")
        runstate.cached("groups", lambda: fake.get_fact(Groups))
    assert fact_names(fake) == ["Groups", "Groups"]


def test_the_tracker_is_registered_once_per_state() -> None:
    with FakeHost().active() as fake:
        runstate.plan("unit", "a.service")
        runstate.plan("unit", "b.service")
    trackers = [h for h in fake.state.callback_handlers if isinstance(h, ChangeTracker)]
    assert len(trackers) == 1


SYSTEMCTL_SHOW = """Id=nginx.service
SubState=running
UnitFileState=enabled

Id=ssh.service
SubState=running
UnitFileState=enabled

Id=rave-backup.timer
SubState=waiting
UnitFileState=disabled
""".splitlines()


def test_unit_states_are_read_per_unit_in_the_order_asked() -> None:
    blocks = UnitStates().process(SYSTEMCTL_SHOW)
    assert [b["Id"] for b in blocks] == ["nginx.service", "ssh.service", "rave-backup.timer"]
    command = UnitStates().command(units=("nginx.service", "sshd.service"))
    assert command.endswith("-- nginx.service sshd.service")


def unit_host(output: list[str]) -> FakeHost:
    """systemctl show answers in the order asked (blocks of units it was not given are lost)."""
    by_id = {block["Id"]: block for block in UnitStates().process(output)}
    return FakeHost(
        {
            UnitStates: lambda units: [by_id[unit] for unit in units if unit in by_id],
            SystemdStatus: lambda **kw: {"rave-backup.timer": True},
            SystemdEnabled: lambda **kw: {"rave-backup.timer": False},
        }
    )


def service_commands(fake: FakeHost, **wanted: Any) -> list[str]:
    arguments = {"running": True, "enabled": None, "restarted": False, "reloaded": False}
    arguments |= {"daemon_reload": False, **wanted}
    with fake.active():
        for unit in ("nginx", "ssh.service", "rave-backup.timer"):
            runstate.plan("unit", runstate.unit_name(unit))
        return [str(c) for c in _service._inner(**arguments)]


def test_a_unit_that_holds_costs_one_batched_fact_and_no_command() -> None:
    fake = unit_host(SYSTEMCTL_SHOW)
    assert service_commands(fake, service="nginx", enabled=True) == []
    assert fact_names(fake) == ["UnitStates"]
    assert set(fake.asked[0][1]["units"]) == {"nginx.service", "ssh.service", "rave-backup.timer"}


def test_a_unit_that_does_not_hold_falls_back_to_pyinfra() -> None:
    fake = unit_host(SYSTEMCTL_SHOW)
    produced = service_commands(fake, service="rave-backup.timer", enabled=True)
    assert produced == ["systemctl enable rave-backup.timer"]  # waiting counts as running
    assert fact_names(fake) == ["UnitStates", "SystemdStatus", "SystemdEnabled"]


def test_restart_and_reload_always_go_to_pyinfra() -> None:
    fake = unit_host(SYSTEMCTL_SHOW)
    fake.answers[SystemdStatus] = lambda **kw: {"nginx.service": True}
    produced = service_commands(fake, service="nginx", restarted=True)
    assert produced == ["systemctl restart nginx.service"]
    assert "UnitStates" not in fact_names(fake)


def test_a_short_systemctl_answer_is_not_trusted() -> None:
    fake = unit_host(SYSTEMCTL_SHOW[:3])  # one block for three units
    fake.answers[SystemdStatus] = lambda **kw: {"nginx.service": True}
    fake.answers[SystemdEnabled] = lambda **kw: {"nginx.service": True}
    assert service_commands(fake, service="nginx", enabled=True) == []
    assert fact_names(fake) == ["UnitStates", "SystemdStatus", "SystemdEnabled"]


def test_unit_names_get_pyinfras_suffix() -> None:
    assert runstate.unit_name("nginx") == "nginx.service"
    assert runstate.unit_name("postgresql@15-main") == "postgresql@15-main.service"
    assert runstate.unit_name("rave-backup.timer") == "rave-backup.timer"
    assert runstate.unit_name("ssh.socket") == "ssh.socket"
    assert runstate.unit_name("odd.name") == "odd.name.service"


def test_packages_installed_need_one_dpkg_list_per_run() -> None:
    fake = FakeHost({DebPackages: lambda: {"curl": ["7.88"], "jq": ["1.6"]}})
    with fake.active():
        first = list(_packages._inner(packages=("curl",)))
        second = list(_packages._inner(packages=("curl", "jq")))
    assert first == second == []
    assert fact_names(fake) == ["DebPackages"]


def test_groups_are_read_once_and_a_missing_one_goes_to_pyinfra() -> None:
    fake = FakeHost({Groups: lambda: ["root", "adm"]})
    with fake.active():
        assert list(ensure_group._inner(group="adm", system=True)) == []
        assert list(ensure_group._inner(group="root", system=True)) == []
    assert fact_names(fake) == ["Groups"]


def test_account_and_existing_users_facts_run_for_real() -> None:
    me = pwd.getpwuid(0)
    account = run_fact(Account(), user=me.pw_name)
    assert account["home"] == me.pw_dir
    assert account["shell"] == me.pw_shell
    assert account["group"] in account["groups"]
    assert run_fact(Account(), user="no-such-user-rave") is None
    existing = run_fact(ExistingUsers(), names=(me.pw_name, "no-such-user-rave"))
    assert existing == {me.pw_name}


def test_account_checks_match_pyinfras_user_operation() -> None:
    account = {"home": "/home/agent", "shell": "/bin/bash", "group": "agent", "groups": ["agent"]}
    assert _account_holds(account, "agent", None, False, "/home/agent", "/bin/bash")
    assert not _account_holds(account, None, ["ssh-login"], True, None, None)
    assert _account_holds(
        {**account, "groups": ["agent", "ssh-login"]}, None, ["ssh-login"], True, None, None
    )
    assert not _account_holds(account, None, None, False, None, "/usr/sbin/nologin")
    assert not _account_holds(account, "rave", None, False, None, None)
    # without append the secondary groups must be exactly these (the primary group aside)
    with_extra = {**account, "groups": ["agent", "ssh-login", "adm"]}
    assert not _account_holds(with_extra, None, ["ssh-login"], False, None, None)


def test_a_user_that_holds_costs_one_fact(tmp_path: Path) -> None:
    me = pwd.getpwuid(0)
    fake = FakeHost()
    arguments = {"group": None, "groups": None, "append": False, "system": False}
    arguments |= {"create_home": False, "ensure_home": False}
    with fake.active():
        produced = list(
            _user._inner(user=me.pw_name, home=me.pw_dir, shell=me.pw_shell, **arguments)
        )
    assert produced == []
    assert fact_names(fake) == ["Account"]


def test_path_states_fact_output_sections() -> None:
    answers = PathStates().process(
        ["root root 644 regular file///etc/a", "@@", "0123  /etc/a", "@@", "directory///etc"]
    )
    assert answers.resolve(["/etc/a", "/etc/b", "/nope/c"]) == {
        "/etc/a": {"kind": "file", "user": "root", "group": "root", "mode": 0o644, "sha1": "0123"},
        "/etc/b": None,
        "/nope/c": {"kind": "absent-parent"},
    }
