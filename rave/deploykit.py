"""Small helpers shared by the task modules (pyinfra operations with the project's conventions)."""

from __future__ import annotations

import fnmatch
import hashlib
import posixpath
import shlex
from collections.abc import Generator
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
from pyinfra.operations import apt
from pyinfra.operations.util.files import chmod, chown

from rave.render import render
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
    """Debian packages without recommends; retried since apt's lock may be busy at boot.

    The first call of a run on a host refreshes apt's lists when they are a day old; later
    calls rely on that (each refresh check costs three facts). A task that adds a source
    runs its own apt.update when the source changed.
    """
    refresh = host.name not in _apt_refreshed
    _apt_refreshed.add(host.name)
    return apt.packages(
        name=name,
        packages=list(packages),
        no_recommends=True,
        update=refresh,
        cache_time=24 * 3600 if refresh else None,
        _retries=3,
        _retry_delay=10,
    )


class ManagedFileState(FactBase):
    """What upload() compares, in one command: type, owner, group, mode and sha1 of a path.

    files.put asks three facts per file (File, Directory for create_remote_dir, Sha1File):
    three round trips where one will do. Returns None when the path does not exist.
    """

    def command(self, path: str) -> str:
        quoted = shlex.quote(path)
        parent = shlex.quote(posixpath.dirname(path) or "/")
        return (
            f"if [ -L {quoted} ] || {{ [ -e {quoted} ] && [ ! -f {quoted} ]; }}; then "
            "echo not-a-file; "
            f"elif [ -f {quoted} ]; then stat -c 'file %U %G %a' {quoted} && sha1sum {quoted}; "
            f"elif [ -d {parent} ]; then echo absent; else echo absent-parent; fi"
        )

    def process(self, output: list[str]) -> dict[str, Any] | None:
        first = output[0].split() if output else []
        if not first or first[0] == "absent":
            return None if first else {"kind": "unknown"}
        if first[0] == "absent-parent":
            return {"kind": "absent-parent"}
        if first[0] == "not-a-file":
            return {"kind": "not-a-file"}
        _, user, group, mode = first
        return {
            "kind": "file",
            "user": user,
            "group": group,
            "mode": int(mode, 8),
            "sha1": output[1].split()[0],
        }


@operation()
def upload(
    content: bytes,
    dest: str,
    user: str = "root",
    group: str = "root",
    mode: str = "644",
) -> Generator[Any, None, None]:
    """A regular file with exactly this content, owner and mode (parent created if missing).

    Compared on the host by sha1, owner, group and mode in one fact (ManagedFileState).
    """
    wanted_mode = int(mode, 8)
    state = host.get_fact(ManagedFileState, path=dest)
    kind = state["kind"] if state else "absent"
    if kind in ("not-a-file", "unknown"):
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


def install_host_script(name: str, src: str, dest: str) -> Any:
    """A root-owned executable from files/."""
    return put_file(name, src, dest, mode="755")


def authorise_operator_keys(config: HostSettings, **arguments: Any) -> Any:
    """authorized_keys of operator_user: exactly operator_keys (a key not listed is removed)."""
    from pyinfra.operations import server

    return server.user_authorized_keys(
        name=f"Authorised keys of {config.operator_user} (exactly operator_keys)",
        user=config.operator_user,
        public_keys=config.operator_keys,
        delete_keys=True,
        **arguments,
    )
