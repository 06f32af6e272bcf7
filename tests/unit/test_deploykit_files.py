"""upload() and sync_tree(): one fact per file / per tree, and only the commands a change needs.

The facts' shell commands run for real on this machine against a temporary tree; the
operations run against a stand-in host that answers with those facts.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pyinfra.api import FileUploadCommand, OperationError
from pyinfra.context import ctx_host

from rave.deploykit import ManagedFileState, TreeState, sync_tree, upload

ME = pwd.getpwuid(os.getuid()).pw_name
MY_GROUP = grp.getgrgid(os.getgid()).gr_name


def run_fact(fact: Any, **kwargs: Any) -> Any:
    output = subprocess.run(
        ["sh", "-c", str(fact.command(**kwargs))], capture_output=True, text=True, check=True
    ).stdout
    return fact.process(output.splitlines())


class FakeHost:
    """Answers get_fact by running the real fact command locally."""

    name = "fake"

    def __init__(self) -> None:
        self.noops: list[str] = []

    def get_fact(self, fact_cls: type, **kwargs: Any) -> Any:
        return run_fact(fact_cls(), **kwargs)

    def noop(self, message: str) -> None:
        self.noops.append(message)

    def get_temp_filename(self, key: str) -> str:
        return f"/tmp/pyinfra-{hashlib.sha1(key.encode()).hexdigest()}"


def commands(op: Any, **kwargs: Any) -> list[str]:
    fake = FakeHost()
    with ctx_host.use(fake):
        produced = list(op._inner(**kwargs))
    return [
        f"upload {command.dest}" if isinstance(command, FileUploadCommand) else str(command)
        for command in produced
    ]


def test_file_state_of_a_file(tmp_path: Path) -> None:
    target = tmp_path / "a.conf"
    target.write_text("hello\n")
    target.chmod(0o640)
    state = run_fact(ManagedFileState(), path=str(target))
    assert state == {
        "kind": "file",
        "user": ME,
        "group": MY_GROUP,
        "mode": 0o640,
        "sha1": hashlib.sha1(b"hello\n").hexdigest(),
    }


def test_file_state_absent_and_absent_parent_and_directory(tmp_path: Path) -> None:
    assert run_fact(ManagedFileState(), path=str(tmp_path / "nope")) is None
    assert run_fact(ManagedFileState(), path=str(tmp_path / "no" / "pe")) == {
        "kind": "absent-parent"
    }
    assert run_fact(ManagedFileState(), path=str(tmp_path)) == {"kind": "not-a-file"}


def test_upload_same_content_owner_and_mode_is_a_noop(tmp_path: Path) -> None:
    target = tmp_path / "a.conf"
    target.write_bytes(b"x=1\n")
    target.chmod(0o644)
    assert commands(upload, content=b"x=1\n", dest=str(target), user=ME, group=MY_GROUP) == []


def test_upload_fixes_only_the_mode(tmp_path: Path) -> None:
    target = tmp_path / "a.conf"
    target.write_bytes(b"x=1\n")
    target.chmod(0o644)
    assert commands(
        upload, content=b"x=1\n", dest=str(target), user=ME, group=MY_GROUP, mode="600"
    ) == [f"chmod 600 {target}"]


def test_upload_changed_content_uploads_and_sets_owner_and_mode(tmp_path: Path) -> None:
    target = tmp_path / "a.conf"
    target.write_bytes(b"x=1\n")
    produced = commands(upload, content=b"x=2\n", dest=str(target), user="root", group="adm")
    assert produced == [f"upload {target}", f"chown root:adm {target}", f"chmod 644 {target}"]


def test_upload_creates_a_missing_parent(tmp_path: Path) -> None:
    target = tmp_path / "new" / "a.conf"
    produced = commands(upload, content=b"x\n", dest=str(target))
    assert produced[:2] == [f"mkdir -p {target.parent}", f"chown root:root {target.parent}"]
    assert f"upload {target}" in produced


def test_upload_refuses_to_replace_a_directory(tmp_path: Path) -> None:
    with pytest.raises(OperationError, match="not a regular file"):
        commands(upload, content=b"x\n", dest=str(tmp_path))


def _tree(root: Path, files: dict[str, bytes]) -> None:
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(0o644)
    for directory in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        directory.chmod(0o755)


def test_sync_tree_in_sync_is_a_noop_and_keeps_bytecode(tmp_path: Path) -> None:
    source, dest = tmp_path / "src", tmp_path / "dest"
    _tree(source, {"a.py": b"a", "sub/b.sql": b"b"})
    _tree(dest, {"a.py": b"a", "sub/b.sql": b"b", "__pycache__/a.cpython-311.pyc": b"c"})
    assert commands(sync_tree, src=str(source), dest=str(dest), user=ME, group=MY_GROUP) == []


def test_sync_tree_uploads_changed_adds_new_and_removes_extra(tmp_path: Path) -> None:
    source, dest = tmp_path / "src", tmp_path / "dest"
    _tree(source, {"a.py": b"new", "sub/b.sql": b"b", "c.py": b"c"})
    _tree(dest, {"a.py": b"old", "sub/b.sql": b"b", "stale.py": b"s", "gone/x.py": b"x"})
    produced = commands(sync_tree, src=str(source), dest=str(dest), user=ME, group=MY_GROUP)
    assert f"upload {dest}/a.py" in produced
    assert f"upload {dest}/c.py" in produced
    assert f"upload {dest}/sub/b.sql" not in produced
    assert f"rm -rf {dest}/stale.py" in produced
    assert f"rm -rf {dest}/gone" in produced
    assert f"rm -rf {dest}/sub" not in produced


def test_sync_tree_creates_a_missing_destination(tmp_path: Path) -> None:
    source, dest = tmp_path / "src", tmp_path / "dest"
    _tree(source, {"a.py": b"a"})
    produced = commands(sync_tree, src=str(source), dest=str(dest))
    assert produced[0] == f"mkdir -p {dest}"
    assert f"upload {dest}/a.py" in produced
    assert f"chown root:root {dest}/a.py" in produced


def test_tree_state_lists_entries_with_owner_mode_and_checksums(tmp_path: Path) -> None:
    _tree(tmp_path / "t", {"a.py": b"a", "sub/b.sql": b"b"})
    state = run_fact(TreeState(), path=str(tmp_path / "t"))
    assert state == {
        "a.py": {
            "kind": "f",
            "user": ME,
            "group": MY_GROUP,
            "mode": "644",
            "sha1": hashlib.sha1(b"a").hexdigest(),
        },
        "sub": {"kind": "d", "user": ME, "group": MY_GROUP, "mode": "755"},
        "sub/b.sql": {
            "kind": "f",
            "user": ME,
            "group": MY_GROUP,
            "mode": "644",
            "sha1": hashlib.sha1(b"b").hexdigest(),
        },
    }
    assert run_fact(TreeState(), path=str(tmp_path / "missing")) is None
