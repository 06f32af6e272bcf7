"""The host script's own logic (files/backup/rave_backup.py), run locally without a host."""

import importlib.util
import json
import os
import stat
import time
from pathlib import Path

import pytest

from rave.render import FILES
from tests.tools import cannot_run_here, require_tool

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
    ("repository", "pgbackrest_posix", "local"),
    [
        ("/var/backups/rave/restic", False, 1),
        ("sftp:backup@backup.example.org:/srv/rave", False, 0),
        ("sftp:backup@backup.example.org:/srv/rave", True, 1),  # pgBackRest's is a path here
    ],
)
def test_repository_metric_says_whether_the_repository_is_on_the_host(
    rb, tmp_path, repository, pgbackrest_posix, local
):
    config = {
        "textfile_dir": str(tmp_path),
        "repository": repository,
        "wal_archiving": pgbackrest_posix,
        "pgbackrest": {"repo_type": "posix"},
    }
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


def test_restored_files_are_reowned_by_name(rb, tmp_path):
    if os.geteuid() != 0:
        cannot_run_here("chown needs root")
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


def test_parse_time_accepts_restic_and_operator_forms(rb):
    a = rb.parse_time("2026-12-06T15:04:05.123456789Z")  # restic: nanoseconds
    b = rb.parse_time("2026-12-06T16:04:05.123456+01:00")
    assert a == b
    assert rb.parse_time("2026-12-06 15:04:05+00:00") == int(a)
    for bad in ("2026-12-06T15:04:05", "yesterday"):
        with pytest.raises(rb.Failure):
            rb.parse_time(bad)
    assert rb.utc(0) == "1970-01-01T00:00:00.000+00:00"


def test_restore_files_never_writes_the_archive_directories(rb, tmp_path, monkeypatch):
    copied = []
    monkeypatch.setattr(rb.subprocess, "run", lambda args, check: copied.append(args[-1]))
    config = {"dump_dir": "/s/dump"}
    legacy = [p.lstrip("/") for p in rb.LEGACY_ARCHIVE]  # snapshots from before pgBackRest
    for path in ("s/dump", *legacy, "etc/x"):
        (tmp_path / path).mkdir(parents=True)
    monkeypatch.setattr(rb.Path, "mkdir", lambda *a, **k: None)
    snapshot = {"paths": ["/s/dump", *rb.LEGACY_ARCHIVE, "/etc/x"]}
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


# -- a rotated repository password: restic's keys follow (real restic on a local repository) ----
@pytest.fixture
def restic() -> str:
    return require_tool("restic")  # a system package CI installs: missing fails, never skips


needs_restic = pytest.mark.usefixtures("restic")


def _rotation_config(tmp_path: Path) -> dict:
    config = _config(tmp_path)
    config.update(
        previous_password_file=str(tmp_path / "previous"),
        password_marker=str(tmp_path / "state" / "repository-password.sha256"),
        state_dir=str(tmp_path / "state"),
        hostname="rave-test",
        textfile_dir=str(tmp_path / "textfile"),
    )
    (tmp_path / "textfile").mkdir()
    (tmp_path / "pw").write_text("old-password-0123456789")
    (tmp_path / "previous").write_text("")
    return config


def _opens(rb, config: dict, password: str, tmp_path: Path) -> str:
    probe = tmp_path / "probe"
    probe.write_text(password)
    return rb.Restic(config, str(probe)).status()


def _init(rb, config: dict) -> int:
    import argparse

    return rb.cmd_init(config, argparse.Namespace(password_file=None))


@needs_restic
def test_rekey_moves_the_repository_to_the_rotated_password(rb, tmp_path, capsys):
    import argparse

    config = _rotation_config(tmp_path)
    assert _init(rb, config) == 0
    marker = Path(config["password_marker"])
    assert marker.read_text().strip() == rb.password_hash(config["password_file"])
    assert stat.S_IMODE(marker.stat().st_mode) == 0o600
    # rave-secrets rotate: the old value becomes the previous one, a new one is current
    (tmp_path / "previous").write_text("old-password-0123456789")
    (tmp_path / "pw").write_text("new-password-0123456789")
    assert rb.Restic(config, None).status() == "wrong-password"

    assert rb.cmd_rekey(config, argparse.Namespace(password_file=None)) == 0
    out = capsys.readouterr().out
    assert _opens(rb, config, "new-password-0123456789", tmp_path) == "initialized"
    assert _opens(rb, config, "old-password-0123456789", tmp_path) == "wrong-password"
    assert len(list((tmp_path / "repo" / "keys").iterdir())) == 1
    assert marker.read_text().strip() == rb.password_hash(config["password_file"])
    assert "password-0123456789" not in out
    # again: nothing to do, nothing changed
    keys = sorted(p.name for p in (tmp_path / "repo" / "keys").iterdir())
    assert rb.cmd_rekey(config, argparse.Namespace(password_file=None)) == 0
    assert _init(rb, config) == 0
    assert sorted(p.name for p in (tmp_path / "repo" / "keys").iterdir()) == keys


@needs_restic
def test_rekey_finishes_an_interrupted_move_and_refuses_unknown_passwords(rb, tmp_path):
    config = _rotation_config(tmp_path)
    assert _init(rb, config) == 0
    # interrupted after `key add`: both passwords open the repository
    new = tmp_path / "new"
    new.write_text("new-password-0123456789")
    restic = rb.Restic(config, None)
    restic.run("key", "add", "--new-password-file", str(new))
    (tmp_path / "previous").write_text("old-password-0123456789")
    (tmp_path / "pw").write_text("new-password-0123456789")
    rb.converge_keys(config, rb.Restic(config, None))
    assert _opens(rb, config, "old-password-0123456789", tmp_path) == "wrong-password"
    assert _opens(rb, config, "new-password-0123456789", tmp_path) == "initialized"
    # neither password opens it: refused, the repository's keys untouched
    (tmp_path / "previous").write_text("another-password-0123456789")
    (tmp_path / "pw").write_text("yet-another-password-0123456789")
    keys = sorted(p.name for p in (tmp_path / "repo" / "keys").iterdir())
    with pytest.raises(rb.Failure) as failure:
        rb.converge_keys(config, rb.Restic(config, None))
    assert failure.value.code == rb.EXIT_PASSWORD
    assert "refuses both" in str(failure.value)
    assert sorted(p.name for p in (tmp_path / "repo" / "keys").iterdir()) == keys


@needs_restic
def test_a_backup_run_moves_a_rotated_password_in_itself(rb, tmp_path):
    """A timer run between the secrets reload and the deploy's rekey does not fail."""
    config = _rotation_config(tmp_path)
    assert _init(rb, config) == 0
    (tmp_path / "previous").write_text("old-password-0123456789")
    (tmp_path / "pw").write_text("new-password-0123456789")
    rb.Restic(config, None).open(rekey=True)
    assert _opens(rb, config, "new-password-0123456789", tmp_path) == "initialized"
    assert _opens(rb, config, "old-password-0123456789", tmp_path) == "wrong-password"
    # an operator's --password-file never rekeys
    assert rb.Restic(config, str(tmp_path / "previous")).previous() is None


# ---------------------------------------------------------- links in postgres's directories
# Root works in directories postgres can write (dump directory, WAL spool, base backups and
# their restored copies): a link planted there must never hand its target to postgres
# (issue 17).

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


def _secret(tmp_path: Path) -> Path:
    """A root-owned 0600 file outside every tree: what a planted link points at."""
    outside = tmp_path / "root-only"
    outside.mkdir(mode=0o700)
    secret = outside / "shadow"
    secret.write_text("root's secret\n")
    secret.chmod(0o600)
    return secret


def _owner_and_mode(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def _restored(tmp_path: Path) -> tuple[Path, dict]:
    """A restored snapshot in temp (root-only, 0700), laid out as restore_to_temp leaves it."""
    temp = tmp_path / "restore"
    temp.mkdir(mode=0o700)
    config = {
        "pg_user": "nobody",
        "dump_dir": "/var/lib/rave-backup/dump",
        "wal_dir": "/var/lib/rave-backup/wal",
        "base_dir": "/var/lib/rave-backup/base",
    }
    for key in ("dump_dir", "wal_dir", "base_dir"):
        (temp / config[key].lstrip("/")).mkdir(parents=True)
    dump = temp / config["dump_dir"].lstrip("/")
    (dump / "manifest.json").write_text(json.dumps({"databases": {}}))
    (dump / "globals.sql").write_text("-- roles\n")
    return temp, config


@root_only
def test_restore_refuses_a_link_in_the_dump_directory_and_leaves_its_target_alone(rb, tmp_path):
    secret = _secret(tmp_path)
    before = _owner_and_mode(secret)
    temp, config = _restored(tmp_path)
    link = temp / "var/lib/rave-backup/dump/evil.dump"
    link.symlink_to(secret)
    refused = None
    try:
        rb.read_manifest(temp, config)
    except rb.Failure as failure:
        refused = str(failure)
    assert _owner_and_mode(secret) == before  # the old code gave it to the postgres user
    assert refused and f"{link} is a symbolic link" in refused
    assert secret.read_text() == "root's secret\n"
    # nothing was handed over: temp is still root's alone
    assert stat.S_IMODE(temp.stat().st_mode) == 0o700
    assert (temp / "var/lib/rave-backup/dump/globals.sql").stat().st_uid == 0


@root_only
def test_restore_refuses_links_fifos_and_linked_trees_naming_them(rb, tmp_path):
    secret = _secret(tmp_path)
    temp, config = _restored(tmp_path)
    spool = temp / "var/lib/rave-backup/wal"
    trees = [spool, temp / "var/lib/rave-backup/base"]
    (spool / "000000010000000000000002.gz").write_text("x")
    fifo = spool / "000000010000000000000003.gz"
    os.mkfifo(fifo)
    with pytest.raises(rb.Failure, match=rf"{fifo} is a fifo"):
        rb.hand_to_postgres(temp, trees, config)
    fifo.unlink()
    # a link to a directory is refused too, not entered
    (temp / "var/lib/rave-backup/base/label").symlink_to(secret.parent)
    with pytest.raises(rb.Failure, match=r"base/label is a symbolic link"):
        rb.hand_to_postgres(temp, trees, config)
    (temp / "var/lib/rave-backup/base/label").unlink()
    # the spool itself a link (to root's directory): refused, nothing followed
    os.rename(spool, tmp_path / "spool-aside")
    spool.symlink_to(secret.parent)
    before = _owner_and_mode(secret)
    with pytest.raises(rb.Failure, match=rf"{spool} to nobody: it is a symbolic link"):
        rb.hand_to_postgres(temp, trees, config)
    assert _owner_and_mode(secret) == before
    assert _owner_and_mode(secret.parent)[0] == 0


@root_only
def test_hand_over_gives_plain_trees_to_postgres_and_opens_the_way(rb, tmp_path):
    import pwd

    nobody = pwd.getpwnam("nobody")
    temp, config = _restored(tmp_path)
    dump = temp / "var/lib/rave-backup/dump"
    (dump / "sub").mkdir()
    (dump / "sub" / "file").write_text("x")
    rb.hand_to_postgres(temp, [dump, temp / "var/lib/rave-backup/absent"], config)
    for path in (dump, dump / "sub", dump / "sub" / "file", dump / "manifest.json"):
        assert path.lstat().st_uid == nobody.pw_uid, path
    for path in (temp, temp / "var", temp / "var/lib", temp / "var/lib/rave-backup"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o711, path
        assert path.stat().st_uid == 0


@root_only
def test_chown_tree_changes_a_link_itself_never_its_target(rb, tmp_path):
    secret = _secret(tmp_path)
    before = _owner_and_mode(secret)
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "file").write_text("x")
    (tree / "link").symlink_to(secret)
    (tree / "dirlink").symlink_to(secret.parent)
    rb.chown_tree(tree, 4321, 4321)
    assert _owner_and_mode(secret) == before
    assert _owner_and_mode(secret.parent)[0] == 0
    assert (tree / "link").lstat().st_uid == 4321
    assert (tree / "sub" / "file").stat().st_uid == 4321
    assert tree.stat().st_uid == 4321


def test_reads_and_writes_in_postgres_directories_never_follow_a_link(rb, tmp_path):
    secret = _secret(tmp_path)
    before = _owner_and_mode(secret)
    spool = tmp_path / "dump"
    spool.mkdir()
    (spool / "manifest.json").symlink_to(secret)
    with pytest.raises(rb.Failure, match="is a symbolic link, not a regular file"):
        rb.read_under(spool, "manifest.json")
    (spool / "sub").symlink_to(secret.parent)
    with pytest.raises(rb.Failure, match="sub is not a directory"):
        rb.read_under(spool, "sub/shadow")
    os.mkfifo(spool / "fifo")
    with pytest.raises(rb.Failure, match="is a fifo"):
        rb.read_under(spool, "fifo")
    # owners.json written by root into the dump directory: the link is replaced, not written
    (spool / "owners.json").symlink_to(secret)
    rb.write_owners(spool)
    assert not (spool / "owners.json").is_symlink()
    assert "users" in json.loads((spool / "owners.json").read_text())
    assert secret.read_text() == "root's secret\n"
    assert _owner_and_mode(secret) == before
    assert sorted(p.name for p in spool.iterdir()) == [
        "fifo",
        "manifest.json",
        "owners.json",
        "sub",
    ]


def test_a_backup_leaves_links_in_the_dump_directory_out(rb, tmp_path):
    secret = _secret(tmp_path)
    config = {"dump_dir": str(tmp_path / "dump")}
    (tmp_path / "dump").mkdir()
    (tmp_path / "dump" / "rave.dump").write_text("x")
    (tmp_path / "dump" / "evil.dump").symlink_to(secret)
    # the backup leaves every link out of the snapshot, with a warning naming it
    assert rb.foreign_in_archive(config) == [str(tmp_path / "dump" / "evil.dump")]
    assert rb.restic_literal("/s/wal/a*b?[c]\\d") == "/s/wal/a\\*b\\?\\[c\\]\\\\d"


def _backup(label: str, kind: str, stop: float) -> dict:
    """An entry of `pgbackrest info --output=json` (the fields rave-backup reads)."""
    return {"label": label, "type": kind, "timestamp": {"start": stop - 10, "stop": stop}}


def test_a_full_backup_when_none_or_the_newest_full_is_too_old(rb):
    config = {"pgbackrest": {"full_interval_days": 7}}
    now = time.time()
    assert rb.backup_type(config, []) == "full"
    recent = [_backup("F1", "full", now - 3600), _backup("D1", "diff", now - 60)]
    assert rb.backup_type(config, recent) == "diff"
    old = [_backup("F1", "full", now - 8 * 86400), _backup("D1", "diff", now - 60)]
    assert rb.backup_type(config, old) == "full"
    only_diffs = [_backup("D1", "diff", now - 60)]  # after expire lost the full: a new full
    assert rb.backup_type(config, only_diffs) == "full"


def test_point_in_time_takes_the_newest_backup_finished_before_the_target(rb, monkeypatch):
    backups = [_backup("F1", "full", 100), _backup("D1", "diff", 200)]
    monkeypatch.setattr(rb, "pgbackrest_backups", lambda config: backups)
    assert rb.backup_for_time({}, 150)["label"] == "F1"
    assert rb.backup_for_time({}, 250)["label"] == "D1"
    with pytest.raises(rb.Failure, match="earliest point it can restore"):
        rb.backup_for_time({}, 50)
    monkeypatch.setattr(rb, "pgbackrest_backups", lambda config: [])
    with pytest.raises(rb.Failure, match="holds no backup"):
        rb.backup_for_time({}, 50)


def test_pgbackrest_target_time_is_utc_with_milliseconds(rb):
    assert rb.pgbackrest_time(1765033445.1239) == "2025-12-06 15:04:05.123+00"
    assert rb.parse_time("2025-12-06 15:04:05.123+00:00") == pytest.approx(1765033445.123)


@pytest.mark.parametrize(
    "repository",
    [
        "sftp:-oProxyCommand=touch${IFS}/tmp/x:/srv/rave",
        "sftp:backup@-oProxyCommand=sh:/srv/rave",
        "sftp://-oProxyCommand=sh/srv/rave",
        "sftp:-lroot@host:/srv/rave",
        "sftp:backup@host;id:/srv/rave",
    ],
)
def test_sftp_refuses_a_host_or_user_that_is_not_a_plain_name(rb, tmp_path, repository):
    config = _remote_config(tmp_path, repository, key="k\n", known_hosts="h k v\n")
    with pytest.raises(rb.Failure, match="names no plain user and host"):
        rb.Restic(config, None).command("check")
