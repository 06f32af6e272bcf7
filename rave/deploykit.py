"""Small helpers shared by the task modules (pyinfra operations with the project's conventions)."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import posixpath
import shlex
from collections.abc import Callable, Generator, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import (
    FactBase,
    FileUploadCommand,
    OperationError,
    QuoteString,
    StringCommand,
    operation,
)
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.server import Groups
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed
from pyinfra.operations.util.files import chmod, chown

from rave import runstate
from rave.render import render
from rave.runstate import Account
from rave.settings import HostSettings
from rave.validation import inventory_layers, validate_host

REPO_ROOT = Path(__file__).resolve().parent.parent
_settings_cache: dict[str, HostSettings] = {}


def settings() -> HostSettings:
    """The current host's validated settings (config.py already refused invalid data)."""
    if host.name not in _settings_cache:
        layers = inventory_layers(host.inventory, host, "inventory")
        _settings_cache[host.name] = validate_host(host.name, layers)
    return _settings_cache[host.name]


_apt_refreshed: set[str] = set()


def ensure_packages(name: str, packages: list[str] | tuple[str, ...]) -> Any:
    """Debian packages without recommends; retried since apt's lock may be busy at boot."""
    return _packages(name=name, packages=tuple(packages), _retries=3, _retry_delay=10)


@operation()
def _packages(packages: tuple[str, ...]) -> Generator[Any, None, None]:
    """Nothing to do when every package is installed (one `dpkg -l` per run, rave.runstate).

    Otherwise apt.packages; the first install of a run on a host refreshes apt's lists when
    they are a day old, later ones rely on that (each refresh check costs three facts). A
    task that adds a source runs its own apt.update when the source changed.
    """
    installed = runstate.cached_fact(DebPackages)
    if all("=" not in package and package in installed for package in packages):
        host.noop(f"packages {', '.join(packages)} are installed")
        return
    refresh = host.name not in _apt_refreshed
    _apt_refreshed.add(host.name)
    yield from apt.packages._inner(
        packages=list(packages),
        no_recommends=True,
        update=refresh,
        cache_time=24 * 3600 if refresh else None,
    )


def remove_packages(name: str, packages: list[str] | tuple[str, ...]) -> Any:
    """apt.packages(present=False); nothing to ask beyond the run's `dpkg -l` if none is in."""
    return _absent_packages(name=name, packages=tuple(packages))


@operation()
def _absent_packages(packages: tuple[str, ...]) -> Generator[Any, None, None]:
    installed = runstate.cached_fact(DebPackages)
    if not any(package in installed for package in packages):
        host.noop(f"packages {', '.join(packages)} are not installed")
        return
    yield from apt.packages._inner(packages=list(packages), present=False)


def _mode(mode: str | int) -> int:
    return int(str(mode), 8)


def ensure_directory(*, path: str, **arguments: Any) -> Any:
    """files.directory for a directory owned user:group with mode (its state batched)."""
    runstate.plan("path", path)
    return _directory(path=path, **arguments)


@operation()
def _directory(path: str, user: str, group: str, mode: str) -> Generator[Any, None, None]:
    state = runstate.path_state(path)
    if state and state["kind"] == "directory" and _owned(state, user, group, mode):
        host.noop(f"directory {path} is as wanted")
        return
    yield from files.directory._inner(path=path, user=user, group=group, mode=mode)


def ensure_file(*, path: str, **arguments: Any) -> Any:
    """files.file (absent, or present with owner and mode), its state batched."""
    runstate.plan("path", path)
    return _file(path=path, **arguments)


@operation()
def _file(
    path: str,
    present: bool = True,
    user: str | None = None,
    group: str | None = None,
    mode: str | None = None,
) -> Generator[Any, None, None]:
    state = runstate.path_state(path)
    if not present and state is None:
        host.noop(f"{path} does not exist")
        return
    if present and state and state["kind"] == "file" and _owned(state, user, group, mode):
        host.noop(f"file {path} is as wanted")
        return
    yield from files.file._inner(path=path, present=present, user=user, group=group, mode=mode)


def remove_file_not_owned_by(*, path: str, **arguments: Any) -> Any:
    """Delete path when it is a regular file of anyone but `owner` (e.g. one a service wrote as
    root before it had an account of its own, in a sticky directory where the account could not
    replace it); absent or `owner`'s: nothing. Its state is batched like ensure_file's."""
    runstate.plan("path", path)
    return _remove_not_owned(path=path, **arguments)


@operation()
def _remove_not_owned(path: str, owner: str) -> Generator[Any, None, None]:
    state = runstate.path_state(path)
    if state is None or state["kind"] != "file" or state["user"] == owner:
        host.noop(f"{path} is absent or {owner}'s")
        return
    yield from files.file._inner(path=path, present=False)


def _owned(state: dict[str, Any], user: str | None, group: str | None, mode: str | None) -> bool:
    return (
        (user is None or state["user"] == user)
        and (group is None or state["group"] == group)
        and (mode is None or state["mode"] == _mode(mode))
    )


def ensure_service(*, service: str, **arguments: Any) -> Any:
    """systemd.service (same defaults); running/enabled that hold cost no fact of their own."""
    runstate.plan("unit", runstate.unit_name(service))
    return _service(service=service, **arguments)


@operation()
def _service(
    service: str,
    running: bool | None = True,
    enabled: bool | None = None,
    restarted: bool = False,
    reloaded: bool = False,
    daemon_reload: bool = False,
) -> Generator[Any, None, None]:
    unit = runstate.unit_name(service)
    if not (restarted or reloaded or daemon_reload):
        state = runstate.unit_state(unit)
        if (
            state is not None
            and (running is None or state["active"] == running)
            and (enabled is None or state["enabled"] == enabled)
        ):
            host.noop(f"unit {unit} is as wanted")
            return
    yield from systemd.service._inner(
        service=service,
        running=running,
        enabled=enabled,
        restarted=restarted,
        reloaded=reloaded,
        daemon_reload=daemon_reload,
    )


@operation()
def ensure_group(group: str, system: bool = False) -> Generator[Any, None, None]:
    """server.group, present; the group list is read once per run (rave.runstate)."""
    if group in runstate.cached_fact(Groups):
        host.noop(f"group {group} exists")
        return
    yield from server.group._inner(group=group, system=system)


def ensure_user(*, user: str, home: str | None = None, **arguments: Any) -> Any:
    """server.user, checked with getent/id instead of pyinfra's Users (a shell loop over
    every account: ~0.35 s of CPU on the host per call)."""
    if arguments.get("ensure_home", True) and home:
        runstate.plan("path", home)
    return _user(user=user, home=home, **arguments)


@operation()
def _user(
    user: str,
    group: str | None = None,
    groups: list[str] | None = None,
    append: bool = False,
    home: str | None = None,
    shell: str | None = None,
    system: bool = False,
    create_home: bool = False,
    ensure_home: bool = True,
) -> Generator[Any, None, None]:
    account = host.get_fact(Account, user=user)
    if account and _account_holds(account, group, groups, append, home, shell):
        home_holds = True
        if ensure_home and home:
            state = runstate.path_state(home)
            home_holds = bool(
                state and state["kind"] == "directory" and _owned(state, user, group or user, None)
            )
        if home_holds:
            host.noop(f"user {user} is as wanted")
            return
    yield from server.user._inner(
        user=user,
        group=group,
        groups=groups,
        append=append,
        home=home,
        shell=shell,
        system=system,
        create_home=create_home,
        ensure_home=ensure_home,
    )


def _account_holds(
    account: dict[str, Any],
    group: str | None,
    groups: list[str] | None,
    append: bool,
    home: str | None,
    shell: str | None,
) -> bool:
    """The checks of pyinfra's server.user for an existing account (no usermod needed)."""
    if home and account["home"] != home:
        return False
    if shell and account["shell"] != shell:
        return False
    if group and account["group"] != group:
        return False
    if groups:
        if append:
            return set(groups).issubset(account["groups"])
        # pyinfra's Users lists secondary groups only; id -Gn includes the primary one
        secondary = set(account["groups"]) - {account["group"]}
        return secondary == set(groups)
    return True


def upload(*, dest: str, **arguments: Any) -> Any:
    """A regular file with exactly this content, owner and mode (parent created if missing).

    Compared on the host by sha1, owner, group and mode; the states of the files a deploy
    uploads are asked in batches (rave.runstate), not one command per file.
    """
    runstate.plan("path", dest)
    return _upload(dest=dest, **arguments)


@operation()
def _upload(
    content: bytes,
    dest: str,
    user: str = "root",
    group: str = "root",
    mode: str = "644",
) -> Generator[Any, None, None]:
    wanted_mode = _mode(mode)
    state = runstate.path_state(dest)
    kind = state["kind"] if state else "absent"
    if kind not in ("absent", "absent-parent", "file"):
        raise OperationError(f"{dest} exists and is not a regular file: refusing to replace it")
    if state and kind == "file" and state["sha1"] == hashlib.sha1(content).hexdigest():
        changed = False
        if (state["user"], state["group"]) != (user, group):
            yield chown(dest, user, group)
            changed = True
        if state["mode"] != wanted_mode:
            yield chmod(dest, mode)
            changed = True
        if not changed:
            host.noop(f"file {dest} is up to date")
        return
    if kind == "absent-parent":
        parent = posixpath.dirname(dest)
        yield StringCommand("mkdir", "-p", QuoteString(parent))
        yield chown(parent, user, group)
    temp = host.get_temp_filename(dest)
    yield FileUploadCommand(BytesIO(content), dest, remote_temp_filename=temp)
    yield chown(dest, user, group)
    yield chmod(dest, mode)


class TreeState(FactBase):
    """Every entry below a directory with owner, group and mode, and every file's sha1.

    One command for a whole tree (files.sync asks two facts per file). None: no directory.
    """

    def command(self, path: str) -> str:
        quoted = shlex.quote(path)
        return (
            f"if [ -d {quoted} ]; then cd {quoted} && "
            "find . -mindepth 1 -printf 'entry %y %u %g %m %P\\n' && "
            "find . -type f -exec sha1sum {} + ; else echo absent; fi"
        )

    def process(self, output: list[str]) -> dict[str, dict[str, Any]] | None:
        if output == ["absent"]:
            return None
        entries: dict[str, dict[str, Any]] = {}
        for line in output:
            if line.startswith("entry "):
                _, kind, user, group, mode, relative = line.split(" ", 5)
                entries[relative] = {"kind": kind, "user": user, "group": group, "mode": mode}
            else:
                digest, relative = line.split(None, 1)
                entries[relative.removeprefix("./")]["sha1"] = digest
        return entries


def _tree_contents(src: Path, skip: tuple[str, ...]) -> dict[str, bytes | None]:
    """Relative path -> content (None for a directory), skipping names matching `skip`."""
    wanted: dict[str, bytes | None] = {}
    for path in sorted(src.rglob("*")):
        relative = path.relative_to(src)
        if any(part_matches(part, skip) for part in relative.parts):
            continue
        wanted[relative.as_posix()] = None if path.is_dir() else path.read_bytes()
    return wanted


def part_matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


@operation()
def sync_tree(
    src: str,
    dest: str,
    user: str = "root",
    group: str = "root",
    mode: str = "644",
    dir_mode: str = "755",
    skip: tuple[str, ...] = ("__pycache__", "*.pyc"),
) -> Generator[Any, None, None]:
    """dest mirrors the repository's directory src: same files, extra ones removed.

    Names matching `skip` are neither shipped nor removed (the host's own bytecode caches).
    """
    source = Path(src) if Path(src).is_absolute() else REPO_ROOT / src
    wanted = _tree_contents(source, skip)
    remote = host.get_fact(TreeState, path=dest)
    changed = remote is None
    if remote is None:
        yield StringCommand("mkdir", "-p", QuoteString(dest))
        yield chown(dest, user, group)
        yield chmod(dest, dir_mode)
        remote = {}
    for relative, content in wanted.items():
        target = f"{dest}/{relative}"
        have = remote.get(relative)
        kind, want_mode = ("d", dir_mode) if content is None else ("f", mode)
        if have and have["kind"] != kind:
            yield StringCommand("rm", "-rf", QuoteString(target))
            have = None
        if content is None:
            if not have:
                yield StringCommand("mkdir", "-p", QuoteString(target))
        elif not have or have.get("sha1") != hashlib.sha1(content).hexdigest():
            temp = host.get_temp_filename(target)
            yield FileUploadCommand(BytesIO(content), target, remote_temp_filename=temp)
            have = None
        if not have or (have["user"], have["group"]) != (user, group):
            yield chown(target, user, group)
            changed = True
        if not have or int(have["mode"], 8) != int(want_mode, 8):
            yield chmod(target, want_mode)
            changed = True
    for relative in sorted(remote, reverse=True):
        if relative not in wanted and not any(
            part_matches(part, skip) for part in relative.split("/")
        ):
            yield StringCommand("rm", "-rf", QuoteString(f"{dest}/{relative}"))
            changed = True
    if not changed:
        host.noop(f"{dest} matches {src}")


def put_text(
    name: str,
    dest: str,
    text: str,
    *,
    user: str = "root",
    group: str = "root",
    mode: str = "644",
) -> Any:
    """Upload text rendered on the control machine (idempotent: compared by checksum)."""
    return upload(name=name, content=text.encode(), dest=dest, user=user, group=group, mode=mode)


def put_file(
    name: str,
    src: str | Path,
    dest: str,
    *,
    user: str = "root",
    group: str = "root",
    mode: str = "644",
) -> Any:
    """Upload a file of the repository (files/, an environment's ciphertext) as it is."""
    path = Path(src)
    content = (path if path.is_absolute() else REPO_ROOT / path).read_bytes()
    return upload(name=name, content=content, dest=dest, user=user, group=group, mode=mode)


def put_template(
    name: str,
    template: str,
    dest: str,
    *,
    user: str = "root",
    group: str = "root",
    mode: str = "644",
    **context: Any,
) -> Any:
    return put_text(name, dest, render(template, **context), user=user, group=group, mode=mode)


def owned_service(
    label: str,
    unit: str,
    *,
    group: str,
    settings_path: str,
    settings: dict[str, Any],
    unit_text: str,
    sandbox_text: str,
    secrets_changed: Callable[[], bool],
    restart_on: Sequence[Any] = (),
) -> None:
    """A long-running service of ours: its settings as JSON (no secrets in them; root-owned,
    readable by the service's group), its unit and sandbox drop-in. systemd is reloaded when
    the units changed; the service is restarted when any of these, an operation of
    `restart_on` (its code) or its secrets changed; it runs and is enabled."""
    settings_file = put_text(
        f"{label} settings (no secrets in them)",
        settings_path,
        json.dumps(settings, indent=1, sort_keys=True) + "\n",
        group=group,
        mode="640",
    )
    unit_file = put_text(f"{label} unit", f"/etc/systemd/system/{unit}.service", unit_text)
    dropin = put_text(
        f"{label} sandbox and resource limits",
        f"/etc/systemd/system/{unit}.service.d/sandbox.conf",
        sandbox_text,
    )
    systemd.daemon_reload(
        name=f"Reload systemd ({label.lower()} unit changed)", _if=any_changed(unit_file, dropin)
    )
    changed = any_changed(settings_file, unit_file, dropin, *restart_on)
    ensure_service(
        name=f"Restart the {label.lower()} (code, settings or secrets changed)",
        service=unit,
        running=True,
        restarted=True,
        _if=lambda: changed() or secrets_changed(),
    )
    ensure_service(name=f"{label} running", service=unit, running=True, enabled=True)


def install_host_script(name: str, src: str, dest: str) -> Any:
    """A root-owned executable from files/."""
    return put_file(name, src, dest, mode="755")


def authorise_operator_keys(config: HostSettings, **arguments: Any) -> Any:
    """authorized_keys of operator_user: exactly operator_keys (a key not listed is removed)."""
    return server.user_authorized_keys(
        name=f"Authorised keys of {config.operator_user} (exactly operator_keys)",
        user=config.operator_user,
        public_keys=config.operator_keys,
        delete_keys=True,
        **arguments,
    )
