"""The host script's own logic (files/backup/rave_backup.py), run locally without a host."""

import importlib.util
import json
import os
import stat
from pathlib import Path

import pytest

from rave.render import FILES

SCRIPT = FILES / "backup" / "rave_backup.py"


@pytest.fixture(scope="module")
def rb():
    spec = importlib.util.spec_from_file_location("rave_backup", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_is_executable_with_debians_python():
    assert SCRIPT.read_text().startswith("#!/usr/bin/python3\n")
    assert SCRIPT.stat().st_mode & stat.S_IXUSR


def test_compare_reports_rows_checksums_missing_and_extra_tables(rb):
    a = {"public.e": {"rows": 2, "checksum": "aa"}, "public.f": {"rows": 1, "checksum": "bb"}}
    assert rb.compare(a, dict(a)) == []
    b = {"public.e": {"rows": 3, "checksum": "cc"}, "public.g": {"rows": 0, "checksum": "dd"}}
    problems = rb.compare(a, b)
    assert problems == [
        "public.e: rows 2 -> 3, checksum aa -> cc",
        "public.f: missing",
        "public.g: unexpected table",
    ]


def test_checksum_sql_quotes_identifiers(rb):
    sql = rb.checksum_sql('we"ird', "t")
    assert 'FROM ONLY "we""ird"."t" t' in sql
    assert "md5(t::text)" in sql


def test_minimal_paths(rb):
    assert rb.minimal_paths(["/etc/ssh/k", "/etc/ssh/", "/etc/sshd"]) == ["/etc/ssh", "/etc/sshd"]


def test_metrics_file_is_replaced_atomically_and_readable(rb, tmp_path):
    config = {"textfile_dir": str(tmp_path)}
    state = {"last_success": 100.0, "last_run": 200.0, "last_duration": 1.5, "last_exit_code": 137}
    rb.write_metrics(config, "rave_backup", rb.backup_metrics(state))
    text = (tmp_path / "rave_backup.prom").read_text()
    assert "rave_backup_last_success_timestamp_seconds 100.000" in text
    assert "rave_backup_last_exit_code 137" in text
    assert "rave_backup_last_size_bytes 0" in text
    assert "# TYPE rave_backup_last_duration_seconds gauge" in text
    assert oct((tmp_path / "rave_backup.prom").stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir()] == ["rave_backup.prom"]  # no temp file left


def _fake_restic(tmp_path: Path, stderr: str, code: int) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "restic"
    fake.write_text(f"#!/bin/sh\necho '{stderr}' >&2\nexit {code}\n")
    fake.chmod(0o755)


def _config(tmp_path: Path) -> dict:
    pw = tmp_path / "pw"
    pw.write_text("secret")
    return {
        "repository": str(tmp_path / "repo"),
        "password_file": str(pw),
        "cache_dir": str(tmp_path / "cache"),
    }


def test_a_wrong_password_is_refused_with_a_clear_error(rb, tmp_path, monkeypatch):
    _fake_restic(tmp_path, "Fatal: wrong password or no key found", 1)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    restic = rb.Restic(_config(tmp_path), None)
    assert restic.status() == "wrong-password"
    with pytest.raises(rb.Failure) as failure:
        restic.open()
    assert failure.value.code == rb.EXIT_PASSWORD
    assert "refused the password" in str(failure.value)
    assert "nothing was changed" in str(failure.value)


def test_a_missing_repository_and_password_are_told_apart(rb, tmp_path, monkeypatch):
    _fake_restic(tmp_path, "Fatal: unable to open config file: Is there a repository at", 1)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    config = _config(tmp_path)
    assert rb.Restic(config, None).status() == "missing"
    assert rb.Restic(config, str(tmp_path / "absent")).status() == "no-password"


def test_the_password_reaches_restic_only_as_a_file(rb, tmp_path):
    env = rb.Restic(_config(tmp_path), None).env()
    assert env["RESTIC_PASSWORD_FILE"] == str(tmp_path / "pw")
    assert "RESTIC_PASSWORD" not in env
    assert "secret" not in json.dumps(env)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_restored_files_are_reowned_by_name(rb, tmp_path):
    import pwd

    nobody = pwd.getpwnam("nobody")
    target = tmp_path / "tree" / "etc" / "thing"
    target.parent.mkdir(parents=True)
    target.write_text("x")
    os.chown(target, 54321, 54321)  # the uid "nobody" had on the backed-up host
    owners = tmp_path / "owners.json"
    owners.write_text(json.dumps({"users": {"54321": "nobody"}, "groups": {"54321": "nogroup"}}))
    assert rb.remap_owners(tmp_path / "tree", owners) == 1
    assert target.stat().st_uid == nobody.pw_uid
