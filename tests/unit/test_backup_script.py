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


@pytest.mark.parametrize(
    ("repository", "local"),
    [("/var/backups/rave/restic", 1), ("sftp:backup@backup.example.org:/srv/rave", 0)],
)
def test_repository_metric_says_whether_the_repository_is_on_the_host(
    rb, tmp_path, repository, local
):
    config = {"textfile_dir": str(tmp_path), "repository": repository}
    rb.write_metrics(config, "rave_backup_repository", rb.repository_metrics(config))
    text = (tmp_path / "rave_backup_repository.prom").read_text()
    assert f"rave_backup_repository_local {local}\n" in text
    assert "# TYPE rave_backup_repository_local gauge" in text


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


def test_wal_file_names_and_positions(rb):
    size = 16 * 1024 * 1024
    assert rb.wal_file_name(1, "0/2000028", size) == "000000010000000000000002"
    assert rb.wal_file_name(2, "1/FF000000", size) == "0000000200000001000000FF"
    assert rb.segment_position("000000010000000000000002.gz") == "0000000000000002"
    assert rb.segment_position("000000010000000000000002.00000028.backup.gz") == (
        "0000000000000002"
    )
    assert rb.segment_position("00000002.history.gz") is None


def test_parse_time_accepts_restic_and_operator_forms(rb):
    a = rb.parse_time("2026-12-06T15:04:05.123456789Z")  # restic: nanoseconds
    b = rb.parse_time("2026-12-06T16:04:05.123456+01:00")
    assert a == b
    assert rb.parse_time("2026-12-06 15:04:05+00:00") == int(a)
    for bad in ("2026-12-06T15:04:05", "yesterday"):
        with pytest.raises(rb.Failure):
            rb.parse_time(bad)
    assert rb.utc(0) == "1970-01-01T00:00:00.000+00:00"


def _base(root: Path, label: str, finished: float, start_wal: str) -> None:
    (root / label).mkdir(parents=True)
    info = {"label": label, "finished": finished, "start_wal": start_wal, "system_identifier": "1"}
    (root / label / "rave-base.json").write_text(json.dumps(info))


def test_prune_keeps_the_newest_base_and_its_wal_and_history(rb, tmp_path):
    config = {"base_dir": str(tmp_path / "base"), "wal_dir": str(tmp_path / "wal")}
    _base(tmp_path / "base", "old", 100, "000000010000000000000002")
    _base(tmp_path / "base", "new", 200, "000000010000000000000005")
    (tmp_path / "base" / "incomplete").mkdir()  # no rave-base.json: not a base backup
    spool = tmp_path / "wal"
    spool.mkdir()
    names = [f"0000000100000000000000{n:02X}.gz" for n in range(2, 8)]
    names += ["00000002.history.gz", "000000010000000000000003.00000028.backup.gz"]
    for name in names:
        (spool / name).write_text("x")
    (spool / ".000000010000000000000008.tmp").write_text("x")  # being archived
    listed = rb.spool_files(config)
    assert [p.name for p in listed] == sorted(names)
    (spool / "000000010000000000000008.gz").write_text("x")  # archived after the listing
    rb.prune_archive(config, listed)
    assert [b["label"] for b in rb.base_backups(config)] == ["new"]
    left = sorted(p.name for p in spool.iterdir())
    assert left == [
        ".000000010000000000000008.tmp",
        "000000010000000000000005.gz",
        "000000010000000000000006.gz",
        "000000010000000000000007.gz",
        "000000010000000000000008.gz",
        "00000002.history.gz",
    ]


def test_choose_base_takes_the_newest_finished_before_the_target(rb, tmp_path):
    config = {"base_dir": "/var/lib/rave-backup/base"}
    root = tmp_path / "var/lib/rave-backup/base"
    _base(root, "a", 100, "000000010000000000000002")
    _base(root, "b", 200, "000000010000000000000005")
    snapshot = {"short_id": "abcd1234"}
    assert rb.choose_base(tmp_path, config, snapshot, 150)["label"] == "a"
    assert rb.choose_base(tmp_path, config, snapshot, 250)["label"] == "b"
    with pytest.raises(rb.Failure, match="earliest point it can restore"):
        rb.choose_base(tmp_path, config, snapshot, 50)


def test_restore_files_never_writes_the_archive_directories(rb, tmp_path, monkeypatch):
    copied = []
    monkeypatch.setattr(rb.subprocess, "run", lambda args, check: copied.append(args[-1]))
    config = {"dump_dir": "/s/dump", "wal_dir": "/s/wal", "base_dir": "/s/base"}
    for path in ("s/dump", "s/wal", "s/base", "etc/x"):
        (tmp_path / path).mkdir(parents=True)
    monkeypatch.setattr(rb.Path, "mkdir", lambda *a, **k: None)
    snapshot = {"paths": ["/s/dump", "/s/wal", "/s/base", "/etc/x"]}
    assert rb.restore_files(tmp_path, snapshot, config) == ["/etc/x"]


def test_wal_status_removes_its_metrics_when_archiving_is_off(rb, tmp_path):
    stale = tmp_path / "rave_wal_archive.prom"
    stale.write_text("rave_wal_archive_metrics_timestamp_seconds 1\n")
    config = {"wal_archiving": False, "textfile_dir": str(tmp_path)}
    assert rb.cmd_wal_status(config, None) == 0
    assert not stale.exists()


def _remote_config(tmp_path, repository, env=None, key="", known_hosts=""):
    files = {"env": json.dumps(env or {}), "key": key, "kh": known_hosts}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return {
        "repository": repository,
        "password_file": str(tmp_path / "pw"),
        "cache_dir": str(tmp_path / "cache"),
        "repository_env_file": str(tmp_path / "env"),
        "sftp_key_file": str(tmp_path / "key"),
        "sftp_known_hosts_file": str(tmp_path / "kh"),
    }


def test_s3_credentials_come_from_the_secret_file_into_restics_environment(rb, tmp_path):
    env = {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "sk"}
    config = _remote_config(tmp_path, "s3:https://s3.example.org/b/rave", env=env)
    restic = rb.Restic(config, None)
    assert restic.env()["AWS_SECRET_ACCESS_KEY"] == "sk"
    assert restic.env()["RESTIC_REPOSITORY"] == "s3:https://s3.example.org/b/rave"
    command = restic.command("snapshots")
    assert command == ["restic", "snapshots"]
    assert "sk" not in " ".join(command)
    # a local repository ignores the file (and its absence)
    config["repository"] = "/srv/restic"
    (tmp_path / "env").unlink()
    assert "AWS_SECRET_ACCESS_KEY" not in rb.Restic(config, None).env()
    config["repository"] = "s3:https://s3.example.org/b/rave"
    with pytest.raises(rb.Failure, match="backup_repository_env"):
        rb.Restic(config, None).env()


@pytest.mark.parametrize(
    ("repository", "target"),
    [
        ("sftp:backup@backup.example.org:/srv/rave", ["-l", "backup", "backup.example.org"]),
        ("sftp://backup@10.0.0.5:2222//srv/rave", ["-p", "2222", "-l", "backup", "10.0.0.5"]),
        ("sftp:backup.example.org:/srv/rave", ["backup.example.org"]),
    ],
)
def test_sftp_uses_the_provisioned_key_and_pinned_known_hosts_only(
    rb, tmp_path, repository, target
):
    config = _remote_config(
        tmp_path, repository, key="-----BEGIN OPENSSH PRIVATE KEY-----\n", known_hosts="h k v\n"
    )
    command = rb.Restic(config, None).command("check")
    assert command[:2] == ["restic", "-o"] and command[-1] == "check"
    assert command[2].startswith("sftp.command=ssh -F none ")
    ssh = command[2].removeprefix("sftp.command=").split()
    assert ssh[ssh.index("-i") + 1] == str(tmp_path / "key")
    assert f"UserKnownHostsFile={tmp_path / 'kh'}" in ssh
    assert "StrictHostKeyChecking=yes" in ssh
    assert "BatchMode=yes" in ssh
    assert ssh[-2:] == ["-s", "sftp"]
    assert ssh[-2 - len(target) : -2] == target


def test_sftp_without_its_key_fails_naming_the_secret(rb, tmp_path):
    config = _remote_config(tmp_path, "sftp:b@h:/r", known_hosts="h k v\n")
    with pytest.raises(rb.Failure, match="set the secret backup_sftp_private_key"):
        rb.Restic(config, None).command("check")
