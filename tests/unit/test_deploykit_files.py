"""upload() and sync_tree(): batched file states / one fact per tree, and only the commands a
change needs.

The facts' shell commands run for real on this machine against a temporary tree; the
operations run against a stand-in host that answers with those facts.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
from pathlib import Path
from typing import Any

import pytest
from pyinfra.api import FileUploadCommand, OperationError

from rave.deploykit import TreeState, _upload, sync_tree
from rave.runstate import PathStates
from tests.unit.fakehost import FakeHost, run_fact

ME = pwd.getpwuid(os.getuid()).pw_name
MY_GROUP = grp.getgrgid(os.getgid()).gr_name
ROOT_644 = {"user": "root", "group": "root", "mode": "644"}


def commands(op: Any, **kwargs: Any) -> list[str]:
    with FakeHost().active():
        produced = list(op._inner(**kwargs))
    return [
        f"upload {command.dest}" if isinstance(command, FileUploadCommand) else str(command)
        for command in produced
    ]


def path_states(*paths: Path) -> Any:
    answers = run_fact(PathStates(), paths=tuple(str(path) for path in paths))
    return answers.resolve(str(path) for path in paths)


def test_path_states_of_files_directories_links_and_missing_paths(tmp_path: Path) -> None:
    target = tmp_path / "a.conf"
    target.write_text("hello\n")
    target.chmod(0o640)
    empty = tmp_path / "empty"
    empty.touch()
    link = tmp_path / "link"
    link.symlink_to(target)
    (tmp_path / "d").mkdir()
    (tmp_path / "d").chmod(0o750)  # not mkdir's mode: the umask of an earlier test applies
    states = path_states(
        target, empty, link, tmp_path / "d", tmp_path / "nope", tmp_path / "no" / "pe"
    )
    assert states[str(target)] == {
        "kind": "file",
        "user": ME,
        "group": MY_GROUP,
        "mode": 0o640,
        "sha1": hashlib.sha1(b"hello\n").hexdigest(),
    }
    assert states[str(empty)]["kind"] == "file"
    assert states[str(empty)]["sha1"] == hashlib.sha1(b"").hexdigest()
    assert states[str(link)]["kind"] == "link"  # not followed
    assert "sha1" not in states[str(link)]
    assert states[str(tmp_path / "d")] == {
        "kind": "directory",
        "user": ME,
        "group": MY_GROUP,
        "mode": 0o750,
    }
    assert states[str(tmp_path / "nope")] is None
    assert states[str(tmp_path / "no" / "pe")] == {"kind": "absent-parent"}


def test_path_states_refuse_relative_and_odd_paths() -> None:
    for bad in ("relative/path", "/a\nb", "/a\\b", "/etc/"):
        with pytest.raises(ValueError, match="plain absolute path"):
            PathStates().command(paths=(bad,))


def test_upload_same_content_owner_and_mode_is_a_noop(tmp_path: Path) -> None:
    target = tmp_path / "a.conf"
    target.write_bytes(b"x=1\n")
    target.chmod(0o644)
    produced = commands(
        _upload, content=b"x=1\n", dest=str(target), user=ME, group=MY_GROUP, mode="644"
    )
    assert produced == []


def test_upload_fixes_only_the_mode(tmp_path: Path) -> None:
    target = tmp_path / "a.conf"
    target.write_bytes(b"x=1\n")
    target.chmod(0o644)
    assert commands(
        _upload, content=b"x=1\n", dest=str(target), user=ME, group=MY_GROUP, mode="600"
    ) == [f"chmod 600 {target}"]


def test_upload_changed_content_uploads_and_sets_owner_and_mode(tmp_path: Path) -> None:
    target = tmp_path / "a.conf"
    target.write_bytes(b"x=1\n")
    produced = commands(
        _upload, content=b"x=2\n", dest=str(target), user="root", group="adm", mode="644"
    )
    assert produced == [f"upload {target}", f"chown root:adm {target}", f"chmod 644 {target}"]


def test_upload_creates_a_missing_parent(tmp_path: Path) -> None:
    target = tmp_path / "new" / "a.conf"
    produced = commands(_upload, content=b"x\n", dest=str(target), **ROOT_644)
    assert produced[:2] == [f"mkdir -p {target.parent}", f"chown root:root {target.parent}"]
    assert f"upload {target}" in produced


def test_upload_refuses_to_replace_a_directory(tmp_path: Path) -> None:
    with pytest.raises(OperationError, match="not a regular file"):
        commands(_upload, content=b"x\n", dest=str(tmp_path), **ROOT_644)


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
