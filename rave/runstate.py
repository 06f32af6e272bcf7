"""What a host looks like, asked once per run until the host changes (pyinfra 3 caches no fact).

pyinfra 3 runs one command per fact and caches none, so a no-change run of the full stack
asked ~250 facts per host, a third of them the same few (`dpkg -l` 14 times, `systemctl show`
40 times, `cat /etc/group` 5 times) and most of the rest one file or directory each. On the
host each command is an sshd exec, a sudo and a shell: ~12 ms of CPU before the command
itself, which is what ten hosts on one machine wait for.

Two things make the answers reusable without going stale:

- a host's *generation*: the number of its operations so far that ran a command. A cached
  answer belongs to one generation; once any operation on that host changed something, the
  next question asks the host again. A no-change run stays in generation 0 throughout.
- *plans*: the deploy code declares, when it defines an operation (before any runs), which
  path or unit that operation will look at. The first question about one of them fetches the
  state of the next planned ones too, in one command.

Operations only use these answers to decide that nothing needs doing; anything else falls
back to pyinfra's own operation, which asks its own facts afresh.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pyinfra import host
from pyinfra.api import FactBase
from pyinfra.api.state import BaseStateCallback, State
from pyinfra.context import ctx_state
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

# paths fetched per command: a first deploy (a change after almost every operation) asks
# again after each change, so one question must not walk the whole plan each time
BATCH = 64
_STATES_ATTRIBUTE = "_rave_runstate"


@dataclass
class HostRun:
    generation: int = 0
    last_op: str | None = None
    planned: dict[str, list[str]] = field(default_factory=dict)
    consumed: dict[str, set[str]] = field(default_factory=dict)
    answers_generation: int = 0
    answers: dict[Any, Any] = field(default_factory=dict)

    def current_answers(self) -> dict[Any, Any]:
        if self.answers_generation != self.generation:
            self.answers = {}
            self.answers_generation = self.generation
        return self.answers


class ChangeTracker(BaseStateCallback):
    """Counts, per host, the operations that ran a command (pyinfra calls these statically)."""

    @staticmethod
    def operation_host_start(state: State, host: Any, op_hash: str) -> None:
        run = _runs(state).setdefault(host.name, HostRun())
        # the host's previous operation has finished: its commands are known now
        if run.last_op is not None and _changed(state, host, run.last_op):
            run.generation += 1
        run.last_op = op_hash


def _changed(state: State, host: Any, op_hash: str) -> bool:
    try:
        meta = state.get_op_data_for_host(host, op_hash).operation_meta
    except KeyError:  # not an operation of this host: nothing ran
        return False
    # an unfinished (nested) operation or one that ran anything may have changed the host
    return not meta.is_complete() or meta.executed


def _runs(state: State) -> dict[str, HostRun]:
    runs: dict[str, HostRun] | None = getattr(state, _STATES_ATTRIBUTE, None)
    if runs is None:
        runs = {}
        setattr(state, _STATES_ATTRIBUTE, runs)
        state.add_callback_handler(ChangeTracker())
    return runs


def host_run() -> HostRun:
    run = _runs(ctx_state.get()).setdefault(host.name, HostRun())
    if run.last_op is None and host.executing_op_hash:
        # first asked while an operation runs (nothing planned earlier): that operation is
        # the one whose commands the tracker must look at when the next one starts
        run.last_op = host.executing_op_hash
    return run


def plan(kind: str, key: str) -> None:
    """Declare (when an operation is defined) that it will ask about `key`."""
    host_run().planned.setdefault(kind, []).append(key)


def cached(key: Any, ask: Callable[[], Any]) -> Any:
    """ask() once per host and generation."""
    answers = host_run().current_answers()
    if key not in answers:
        answers[key] = ask()
    return answers[key]


def cached_fact(fact: type[FactBase]) -> Any:
    """A fact without arguments (dpkg -l, /etc/group), asked once per host and generation."""
    return cached(fact, lambda: host.get_fact(fact))


def lookup(
    kind: str,
    key: str,
    fetch: Callable[[tuple[str, ...]], dict[str, Any]],
    consume: bool = True,
) -> Any:
    """The state of `key`, fetched together with the next planned keys of the same kind.

    consume: each key is asked once (a file per upload), so the next batch skips it; units
    are asked by several operations and stay in every batch.
    """
    run = host_run()
    answers = run.current_answers().setdefault(("batch", kind), {})
    if key not in answers:
        consumed = run.consumed.setdefault(kind, set())
        planned = run.planned.get(kind, [])
        # operations planned before this one have run or were skipped: not theirs to fetch
        after = planned[planned.index(key) + 1 :] if key in planned else planned
        pending = [
            later
            for later in dict.fromkeys(after)
            if later != key and later not in answers and later not in consumed
        ]
        answers.update(fetch((key, *pending[: BATCH - 1])))
    if consume:
        run.consumed.setdefault(kind, set()).add(key)
    return answers[key]


# --- facts that answer for many paths or units in one command


class PathStates(FactBase):
    """Type, owner, group, mode (and sha1 of regular files) of many paths, in three processes.

    {path: None} when the path does not exist and its parent is a directory, else
    {"kind": "file" | "directory" | "link" | "other" | "absent-parent", "user", "group",
    "mode" (int), "sha1" (regular files)}.
    """

    def command(self, paths: tuple[str, ...]) -> str:
        for path in paths:
            if not posixpath.isabs(path) or path.endswith("/") or any(c in path for c in "\n\\"):
                raise ValueError(f"not a plain absolute path: {path!r}")
        quoted = " ".join(shlex.quote(path) for path in paths)
        parents = " ".join(shlex.quote(posixpath.dirname(path) or "/") for path in paths)
        # '//' cannot appear in %U/%G/%a/%F, so it separates them from the path
        return (
            f"stat -c '%U %G %a %F//%n' -- {quoted} 2>/dev/null; echo @@; "
            f"sha1sum -- {quoted} 2>/dev/null; echo @@; "
            f"stat -L -c '%F//%n' -- {parents} 2>/dev/null; true"
        )

    def process(self, output: list[str]) -> dict[str, dict[str, Any] | None]:
        sections: list[list[str]] = [[]]
        for line in output:
            if line == "@@":
                sections.append([])
            else:
                sections[-1].append(line)
        stats, digests, parents = [*sections, [], [], []][:3]
        found: dict[str, dict[str, Any]] = {}
        for line in stats:
            head, path = line.split("//", 1)
            user, group, mode, kind = head.split(" ", 3)
            found[path] = {
                "kind": _KINDS.get(kind, "other"),
                "user": user,
                "group": group,
                "mode": int(mode, 8),
            }
        for line in digests:
            digest, path = line.split("  ", 1)
            if path in found and found[path]["kind"] == "file":
                found[path]["sha1"] = digest
        directories = {
            line.split("//", 1)[1] for line in parents if line.split("//", 1)[0] == "directory"
        }
        return _PathAnswers(found, directories)


_KINDS = {
    "regular file": "file",
    "regular empty file": "file",
    "directory": "directory",
    "symbolic link": "link",
}


class _PathAnswers(dict[str, Any]):
    """found paths, and for any other path: None under a directory, else absent-parent."""

    def __init__(self, found: dict[str, dict[str, Any]], directories: set[str]) -> None:
        super().__init__(found)
        self.directories = directories

    def resolve(self, paths: Iterable[str]) -> dict[str, dict[str, Any] | None]:
        return {
            path: self[path]
            if path in self
            else (
                None
                if (posixpath.dirname(path) or "/") in self.directories
                else {"kind": "absent-parent"}
            )
            for path in paths
        }


def path_state(path: str) -> dict[str, Any] | None:
    """PathStates of one path, batched with the paths planned after it."""

    def fetch(paths: tuple[str, ...]) -> dict[str, Any]:
        answers = host.get_fact(PathStates, paths=paths)
        return answers.resolve(paths)

    return lookup("path", path, fetch)


def is_kind(path: str, kind: str) -> bool:
    """Whether path is a regular "file", a "directory" or a "link" (not following links)."""
    state = path_state(path)
    return bool(state and state["kind"] == kind)


class UnitStates(FactBase):
    """Whether units are active and enabled, as pyinfra's SystemdStatus/SystemdEnabled decide."""

    ACTIVE = SystemdStatus.state_values
    ENABLED = SystemdEnabled.state_values

    def command(self, units: tuple[str, ...]) -> str:
        quoted = " ".join(shlex.quote(unit) for unit in units)
        return (
            "systemctl show --all --property Id --property SubState --property UnitFileState "
            f"-- {quoted}"
        )

    def process(self, output: list[str]) -> list[dict[str, str]]:
        """One block per unit asked, in the order asked (an alias reports its own Id)."""
        blocks: list[dict[str, str]] = [{}]
        for line in output:
            if not line.strip():
                if blocks[-1]:
                    blocks.append({})
                continue
            key, _, value = line.partition("=")
            blocks[-1][key] = value
        return [block for block in blocks if block]


UNIT_SUFFIXES = (
    ".service",
    ".socket",
    ".device",
    ".mount",
    ".automount",
    ".swap",
    ".target",
    ".path",
    ".timer",
    ".slice",
    ".scope",
)


def unit_name(service: str) -> str:
    """As pyinfra's systemd.service: .service appended unless the name ends in a unit type."""
    return service if service.endswith(UNIT_SUFFIXES) else f"{service}.service"


def unit_state(unit: str) -> dict[str, bool] | None:
    """{"active", "enabled"} of a unit, batched with every planned unit; None: unknown."""

    def fetch(units: tuple[str, ...]) -> dict[str, Any]:
        blocks = host.get_fact(UnitStates, units=units)
        if len(blocks) != len(units):  # not one block per unit: trust none of them
            return dict.fromkeys(units)
        return {
            asked: {
                "active": block.get("SubState") in UnitStates.ACTIVE,
                "enabled": block.get("UnitFileState") in UnitStates.ENABLED,
            }
            for asked, block in zip(units, blocks, strict=True)
        }

    return lookup("unit", unit, fetch, consume=False)


class Account(FactBase):
    """A user's passwd entry, primary group and groups; None if there is no such user."""

    def command(self, user: str) -> str:
        quoted = shlex.quote(user)
        return f"getent passwd {quoted} && id -gn {quoted} && id -Gn {quoted} || true"

    def process(self, output: list[str]) -> dict[str, Any] | None:
        if len(output) < 3:
            return None
        fields = output[0].split(":")
        return {
            "home": fields[5],
            "shell": fields[6],
            "group": output[1].strip(),
            "groups": output[2].split(),
        }


class ExistingUsers(FactBase):
    """Which of these accounts exist (pyinfra's Users walks every account in a shell loop)."""

    def command(self, names: tuple[str, ...]) -> str:
        return f"getent passwd {' '.join(shlex.quote(name) for name in names)} || true"

    def process(self, output: list[str]) -> set[str]:
        return {line.split(":", 1)[0] for line in output if ":" in line}
