#!/usr/bin/python3
"""rave-backup: the host side of RAVE backups (pgBackRest + restic + pg_dump), from tasks/backup.py.

Subcommands (run as root; `dump` and `checksums` run as the postgres user, started by the others):
  init       create the restic repository if it does not exist, else `rekey` (idempotent)
  rekey      make the current password open the repository: after `rave-secrets rotate
             backup_repository_password` the previous password (kept in its own secret) adds a
             restic key for the new one, the new one is proven to open the repository, then the
             previous key is removed; records a hash of the password that works, so the deploy
             knows cheaply when to call it (idempotent: nothing to do, nothing changed)
  run        one backup: a pgBackRest backup of the cluster (full when the newest full one is
             older than full_interval_days, else differential; pgBackRest expires by its
             retention), consistent dumps of every project database, then a restic snapshot of
             the dumps and the project's files; writes node-exporter textfile metrics (the unit)
  wal-status WAL archiving metrics (pg_stat_archiver: pushed, failed, lag) for the node exporter
  stanza     pgBackRest stanza-create (idempotent) and check; the deploy runs it for a new cluster
  now        start rave-backup.service, wait for it and print what it did (ops/backup_now.py)
  list       the repository's snapshots of this host
  check      remove stale locks, then `restic check`
  maintain   forget --prune with the retention policy, then check (rave-backup-maintenance.service)
  verify     a real restore of a snapshot's dumps into scratch databases, compared table by table
             (row counts and content checksums) with the values taken at backup time and with the
             live database; plus `restic check`
  restore    the database alone (--scope database) or the whole host (--scope host: files, secrets
             file, SSH host keys, databases and roles), from a snapshot, then restarts what it must;
             with --scope host the cluster comes from pgBackRest (up to the last pushed WAL), with
             --target-time from pgBackRest to that point in time (a backup plus archived WAL)

The repository password is read by restic from RESTIC_PASSWORD_FILE (never on a command line);
pgBackRest runs as postgres through rave-pgbackrest, which reads its cipher pass from the
secrets into its environment.
A remote repository's credentials come from the secrets directory too: the JSON of
backup_repository_env joins restic's environment (root's own process; the postgres-side
subcommands never get it), and an sftp: repository is reached with
`-o sftp.command=ssh -i <key file> -o UserKnownHostsFile=<known_hosts file> ...`
(file names only on the command line, StrictHostKeyChecking=yes).
A new password reaches restic from its file only (`key add --new-password-file`).
Exit codes: 0 ok, 1 failure, 2 repository password refused, 3 bad usage or verification mismatch.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import grp
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

CONFIG = "/etc/rave/backup.json"
CONFIG_ENV = "RAVE_BACKUP_CONFIG"
# the host's identity (SSH host key: also its secrets recipient) and the encrypted secrets
IDENTITY_FILES = (
    "/etc/rave/secrets.age",
    "/etc/ssh/ssh_host_ed25519_key",
    "/etc/ssh/ssh_host_ed25519_key.pub",
)
SCRATCH_PREFIX = "rave_verify_"
PRE_RESTORE_SUFFIX = "__pre_restore"

EXIT_FAILED = 1
EXIT_PASSWORD = 2
EXIT_MISMATCH = 3
EXIT_USAGE = 3


class Failure(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


def say(message: str) -> None:
    print(message, flush=True)


def warn(message: str) -> None:
    # "<4>"/"<3>": journald's syslog-level prefix (warning/error) when run by systemd
    prefix = "<4>" if os.environ.get("INVOCATION_ID") else ""
    print(f"{prefix}rave-backup: WARNING: {message}", file=sys.stderr, flush=True)


def error(message: str) -> None:
    prefix = "<3>" if os.environ.get("INVOCATION_ID") else ""
    print(f"{prefix}rave-backup: FAILED: {message}", file=sys.stderr, flush=True)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


# --------------------------------------------------------------------------- configuration


def load_config(path: str) -> dict[str, Any]:
    inherited = os.environ.get(CONFIG_ENV)  # the postgres-side subcommands get it from root
    if inherited:
        return json.loads(inherited)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise Failure(f"{path} is missing: deploy the backup task first") from None


def minimal_paths(paths: list[str]) -> list[str]:
    """Sorted, without duplicates and without paths inside another listed path."""
    result: list[str] = []
    for path in sorted({os.path.normpath(p) for p in paths}):
        if not any(path == kept or path.startswith(kept.rstrip("/") + "/") for kept in result):
            result.append(path)
    return result


def is_local_repository(repository: str) -> bool:
    return repository.startswith("/")


# --------------------------------------------------------------------------- restic


class Restic:
    def __init__(self, config: dict[str, Any], password_file: str | None):
        self.config = config
        self.password_file = password_file or config["password_file"]

    def env(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("RESTIC_") and key not in ("AWS_ACCESS_KEY_ID",)
        }
        env.update(
            RESTIC_REPOSITORY=self.config["repository"],
            RESTIC_PASSWORD_FILE=self.password_file,
            RESTIC_CACHE_DIR=self.config["cache_dir"],
            HOME=os.environ.get("HOME", "/root"),
        )
        env.update(repository_env(self.config))
        return env

    def command(self, *args: str) -> list[str]:
        return ["restic", *sftp_options(self.config), *args]

    def run(
        self, *args: str, capture: bool = True, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.command(*args),
            env=self.env(),
            text=True,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            check=False,
        )
        if check and result.returncode != 0:
            raise Failure(f"restic {args[0]} failed (exit {result.returncode}): {tail(result)}")
        return result

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(*args), env=self.env(), text=True, stdout=subprocess.PIPE
        )

    def status(self) -> str:
        """initialized | missing | wrong-password | no-password | error: ..."""
        if not os.path.isfile(self.password_file):
            return "no-password"
        result = self.run("cat", "config", check=False)
        if result.returncode == 0:
            return "initialized"
        text = (result.stderr or "") + (result.stdout or "")
        if "wrong password" in text or "no key found" in text:
            return "wrong-password"
        if "Is there a repository" in text or "does not exist" in text:
            return "missing"
        return "error: " + text.strip().splitlines()[-1] if text.strip() else "error"

    def open(self, rekey: bool = False) -> None:
        """Fail unless the repository exists and takes our password; touches nothing (but with
        rekey: a refused password is first moved in from the previous one, see rekey())."""
        status = self.status()
        if status == "initialized":
            return
        if status == "wrong-password" and rekey and self.previous() is not None:
            converge_keys(self.config, self, status)
            return
        repo = self.config["repository"]
        if status == "wrong-password":
            raise Failure(
                f"the repository {repo} refused the password from {self.password_file} "
                "(wrong password or no key found); nothing was changed",
                EXIT_PASSWORD,
            )
        if status == "no-password":
            raise Failure(
                f"no repository password at {self.password_file} (is rave-secrets.service up?)",
                EXIT_PASSWORD,
            )
        if status == "missing":
            raise Failure(f"no restic repository at {repo} (deploy runs `rave-backup init`)")
        raise Failure(f"cannot open the repository {repo}: {status}")

    def previous(self) -> Restic | None:
        """The repository opened with the password before the last rotation (the secret
        backup_repository_previous_password), when one is kept and we use the configured one."""
        path = self.config.get("previous_password_file")
        if self.password_file != self.config["password_file"] or not path:
            return None
        try:
            with open(path, encoding="utf-8") as handle:
                if not handle.read().strip():
                    return None
        except FileNotFoundError:
            return None
        return Restic(self.config, path)

    def current_key(self) -> str:
        """The id of the restic key our password opens."""
        result = self.run("key", "list", "--json", "--no-lock")
        keys = [k for k in json.loads(result.stdout or "[]") if k.get("current")]
        if len(keys) != 1:
            raise Failure("restic key list names no current key")
        return str(keys[0]["id"])

    def locks(self) -> list[str]:
        result = self.run("list", "locks", "--no-lock", check=False)
        return (result.stdout or "").split() if result.returncode == 0 else []

    def unlock_stale(self) -> None:
        """Remove stale locks (their process is gone, e.g. a killed run); live ones stay."""
        before = self.locks()
        if not before:
            return
        self.run("unlock", check=False)
        after = self.locks()
        if len(after) < len(before):
            warn(
                f"removed {len(before) - len(after)} stale repository lock(s) left by an "
                "interrupted run"
            )

    def snapshots(self) -> list[dict[str, Any]]:
        result = self.run("snapshots", "--json", "--host", self.config["hostname"])
        return sorted(json.loads(result.stdout or "[]"), key=lambda s: s["time"])

    def resolve(self, snapshot: str) -> dict[str, Any]:
        snapshots = self.snapshots()
        if not snapshots:
            raise Failure(f"no snapshot of host {self.config['hostname']} in the repository")
        if snapshot == "latest":
            return snapshots[-1]
        matches = [s for s in snapshots if s["id"].startswith(snapshot)]
        if len(matches) != 1:
            raise Failure(f"snapshot {snapshot!r} not found (or ambiguous) for this host")
        return matches[0]


def password_hash(path: str) -> str:
    """sha256 of the password file, as `sha256sum < FILE | cut -d' ' -f1` prints it."""
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def write_marker(config: dict[str, Any], restic: Restic) -> None:
    """Record that the configured password opens the repository (the deploy's fact compares
    the password file's hash with it to skip `rekey` without a restic key derivation)."""
    marker = config.get("password_marker")
    if not marker or restic.password_file != config["password_file"]:
        return
    Path(marker).parent.mkdir(mode=0o711, parents=True, exist_ok=True)
    tmp = f"{marker}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password_hash(restic.password_file) + "\n")
    os.replace(tmp, marker)


def converge_keys(config: dict[str, Any], restic: Restic, status: str | None = None) -> None:
    """The current password opens the repository and the previous one no longer does.

    Refused current password, previous one opens: `key add` (authenticated with the previous
    password, the new one read from its file), the new one must open the repository and be a
    different key, then `key remove` of the previous key (authenticated with the new one).
    Both open (a run interrupted before the removal): the previous key is removed. Anything
    else changes nothing. The caller holds the host lock.
    """
    status = status or restic.status()
    previous = restic.previous()
    repo = config["repository"]
    if status == "initialized":
        if previous is None or previous.status() != "initialized":
            return
        old_id, new_id = previous.current_key(), restic.current_key()
        if old_id == new_id:
            return  # the same password in both secrets: nothing to move
        restic.run("key", "remove", old_id)
        say(f"removed the previous password's key {old_id} (the current one opens {repo})")
        return
    if status != "wrong-password" or previous is None:
        restic.open()  # raises the precise reason
        return
    if previous.status() != "initialized":
        raise Failure(
            f"the repository {repo} refuses both the current password ({restic.password_file}) "
            f"and the previous one ({previous.password_file}); nothing was changed",
            EXIT_PASSWORD,
        )
    old_id = previous.current_key()
    say(f"the repository {repo} still has the previous password's key {old_id}: moving it")
    previous.run("key", "add", "--new-password-file", restic.password_file)
    if restic.status() != "initialized":
        raise Failure(
            f"the new key does not open {repo}; the previous key {old_id} stays", EXIT_PASSWORD
        )
    new_id = restic.current_key()
    if new_id == old_id:
        raise Failure(f"the new password opens the previous key {old_id}; nothing removed")
    say(f"added key {new_id} for the current password; it opens the repository")
    restic.run("key", "remove", old_id)
    if previous.status() != "wrong-password":
        raise Failure(f"the previous password still opens {repo} after removing key {old_id}")
    say(f"removed key {old_id}: the previous password no longer opens the repository")


def read_secret(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        raise Failure(f"no {what} at {path} (is rave-secrets.service up?)") from None


def repository_env(config: dict[str, Any]) -> dict[str, str]:
    """restic's environment for a remote repository (the secret backup_repository_env)."""
    path = config.get("repository_env_file")
    if not path or is_local_repository(config["repository"]):
        return {}
    text = read_secret(path, "repository environment (secret backup_repository_env)")
    try:
        env = json.loads(text or "{}")
    except ValueError:
        raise Failure(f"{path} is not JSON (secret backup_repository_env)") from None
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise Failure(f"{path} is not a JSON object of strings (secret backup_repository_env)")
    return env


# user and host reach ssh's command line: a plain user name and a host name or IPv4 address
# only (the settings refuse anything else too), never "-oProxyCommand=..."
SFTP_USER = r"(?:(?P<user>[A-Za-z0-9_][A-Za-z0-9._-]{0,31})@)?"
SFTP_HOST = r"(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)"
SFTP_SHORT = re.compile(rf"^sftp:{SFTP_USER}{SFTP_HOST}:(?P<path>.+)$")
SFTP_URL = re.compile(rf"^sftp://{SFTP_USER}{SFTP_HOST}(?::(?P<port>[0-9]{{1,5}}))?/(?P<path>.*)$")


def sftp_options(config: dict[str, Any]) -> list[str]:
    """`-o sftp.command=ssh ...` for an sftp: repository: the provisioned key and the pinned
    known_hosts only (no agent, no ~/.ssh, no prompt); [] for any other repository."""
    repository = config["repository"]
    if not repository.startswith("sftp:"):
        return []
    match = (SFTP_URL if repository.startswith("sftp://") else SFTP_SHORT).match(repository)
    if not match:
        raise Failure(
            f"the sftp repository {repository!r} names no plain user and host name or address "
            "(sftp:[user@]host:/path or sftp://[user@]host[:port]/path)"
        )
    key, known_hosts = config.get("sftp_key_file"), config.get("sftp_known_hosts_file")
    if not key or not known_hosts:
        raise Failure(f"{repository}: the configuration names no sftp key or known_hosts file")
    for path, secret in (
        (key, "backup_sftp_private_key"),
        (known_hosts, "backup_sftp_known_hosts"),
    ):
        if not read_secret(path, f"secret {secret}").strip():
            raise Failure(f"{path} is empty: set the secret {secret} (docs/backup.md)")
    ssh = [
        "ssh",
        "-F", "none",
        "-i", key,
        "-o", "IdentitiesOnly=yes",
        "-o", "IdentityAgent=none",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes",
        "-o", "ServerAliveInterval=60",
    ]  # fmt: skip
    port = match.groupdict().get("port")
    if port:
        ssh += ["-p", port]
    if match.group("user"):
        ssh += ["-l", match.group("user")]
    ssh += [match.group("host"), "-s", "sftp"]
    return ["-o", "sftp.command=" + " ".join(ssh)]


def tail(result: subprocess.CompletedProcess[str], lines: int = 5) -> str:
    text = ((result.stderr or "") + (result.stdout or "")).strip().splitlines()
    return " | ".join(text[-lines:]) or "(no output)"


# --------------------------------------------------------------------------- locking


@contextlib.contextmanager
def host_lock(config: dict[str, Any], wait_seconds: int):
    """One backup operation at a time on this host (the timer, maintenance and the ops)."""
    state_dir = Path(config["state_dir"])
    state_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
    with open(state_dir / "lock", "w") as handle:
        deadline = time.monotonic() + wait_seconds
        announced = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Failure("another backup operation is still running") from None
                if not announced:
                    say("waiting for another backup operation on this host to finish ...")
                    announced = True
                time.sleep(1)
        yield


# ------------------------------------------------------- files in other accounts' directories
# Root works in directories that PostgreSQL (or another service account) can write: the dump
# directory and its restored copy. Nothing there is followed: reads open with O_NOFOLLOW below
# a trusted directory, writes create a new file and rename it into place, ownership changes
# never follow a link, and a restore hands PostgreSQL only regular files and directories (a
# planted link would hand it the link's target).

NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a fifo"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "of an unknown file type"


def plain(mode: int) -> bool:
    """A regular file or a directory (what root may hand to, or take from, another account)."""
    return stat.S_ISREG(mode) or stat.S_ISDIR(mode)


@contextlib.contextmanager
def directory_fd(base: Path, parts: tuple[str, ...] = ()):
    """An fd of base/parts...: base is trusted (root's), no link is followed below it."""
    try:
        fd = os.open(base, NOFOLLOW_DIR)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise Failure(f"{base}: {exc.strerror} (a link is not followed)") from None
    try:
        for part in parts:
            try:
                below = os.open(part, NOFOLLOW_DIR, dir_fd=fd)
            except FileNotFoundError:
                raise
            except OSError as exc:
                raise Failure(
                    f"{base.joinpath(*parts)}: {part} is not a directory ({exc.strerror}; "
                    "a link is not followed)"
                ) from None
            os.close(fd)
            fd = below
        yield fd
    finally:
        os.close(fd)


def read_under(base: Path, relative: str | Path) -> bytes:
    """The bytes of the regular file base/relative; a link (at any level below base), fifo or
    device there is refused, never followed or opened."""
    parts = Path(relative).parts
    path = base.joinpath(*parts)
    with directory_fd(base, parts[:-1]) as dir_fd:
        try:
            mode = os.lstat(parts[-1], dir_fd=dir_fd).st_mode
            if not stat.S_ISREG(mode):
                raise Failure(f"{path} is {file_kind(mode)}, not a regular file: not read")
            # O_NONBLOCK: a fifo swapped in after the lstat does not block the open
            fd = os.open(
                parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
            )
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise Failure(f"{path}: {exc.strerror} (a link is not followed)") from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise Failure(f"{path} is {file_kind(mode)}, not a regular file: not read")
        return handle.read()


def write_under(base: Path, relative: str | Path, data: bytes, mode: int = 0o644) -> None:
    """base/relative replaced by a new file holding data (a link there is replaced, its target
    never written)."""
    parts = Path(relative).parts
    with directory_fd(base, parts[:-1]) as dir_fd:
        tmp = f".{parts[-1]}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=dir_fd,
        )
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            os.fchmod(handle.fileno(), mode)
        os.replace(tmp, parts[-1], src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def foreign_entries(top: Path) -> list[tuple[str, str]]:
    """(path, kind) of what under top (top included) is not a regular file or a directory;
    links are listed, never followed or entered. [] when top does not exist."""
    try:
        mode = os.lstat(top).st_mode
    except FileNotFoundError:
        return []
    if not stat.S_ISDIR(mode):
        return [] if plain(mode) else [(str(top), file_kind(mode))]
    found = []
    for root, dirs, files in os.walk(top):  # followlinks=False: a link to a directory is in dirs
        for name in sorted(dirs + files):
            path = os.path.join(root, name)
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:  # e.g. a WAL file being renamed into place
                continue
            if not plain(mode):
                found.append((path, file_kind(mode)))
    return found


def chown_tree(top: Path, uid: int, gid: int) -> None:
    """top and everything in it to uid:gid, deepest first (a directory changes owner only
    after its contents), never following a link."""
    for _root, dirs, files, root_fd in os.fwalk(top, topdown=False, follow_symlinks=False):
        for name in files + dirs:
            os.chown(name, uid, gid, dir_fd=root_fd, follow_symlinks=False)
    os.chown(top, uid, gid, follow_symlinks=False)


def chmod_directory(path: Path, mode: int) -> None:
    """chmod of a directory that must not be a link (opened with O_NOFOLLOW, then fchmod)."""
    fd = os.open(path, NOFOLLOW_DIR)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- postgres


def pg_env(config: dict[str, Any]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGHOST=config["pg_host"], PGPORT=str(config["pg_port"]), HOME=config["pg_home"])
    env[CONFIG_ENV] = json.dumps(config)  # nothing secret in it
    return env


def as_postgres(
    config: dict[str, Any], args: list[str], capture: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    user = config["pg_user"]
    kwargs: dict[str, Any] = {}
    if os.geteuid() == 0 and user != pwd.getpwuid(0).pw_name:
        entry = pwd.getpwnam(user)
        kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    return subprocess.run(
        args,
        env=pg_env(config),
        text=True,
        input=stdin,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
        check=False,
        cwd="/",
        **kwargs,
    )


def self_as_postgres(config_path: str, config: dict[str, Any], *args: str) -> str:
    """This script as the postgres user (it cannot read the root-only configuration file)."""
    result = as_postgres(
        config, [sys.executable, os.path.abspath(__file__), "--config", config_path, *args]
    )
    if result.returncode != 0:
        raise Failure(f"{args[0]} as {config['pg_user']} failed: {tail(result)}")
    return result.stdout


def psql(config: dict[str, Any], sql: str, db: str = "postgres") -> str:
    result = as_postgres(
        config, ["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql]
    )
    if result.returncode != 0:
        raise Failure(f"psql on {db}: {tail(result)}")
    return result.stdout


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


TABLES_SQL = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
ORDER BY 1, 2
"""


def checksum_sql(schema: str, table: str) -> str:
    """Row count and an order-independent content checksum (two 64-bit sums of row md5s).

    Streams: no sort and no aggregate string, so it works on tables of any size.
    """
    return (
        "SELECT count(*), "
        "coalesce(sum(('x' || substr(h, 1, 16))::bit(64)::bigint::numeric), 0), "
        "coalesce(sum(('x' || substr(h, 17, 16))::bit(64)::bigint::numeric), 0) "
        f"FROM (SELECT md5(t::text) AS h FROM ONLY {quote_ident(schema)}.{quote_ident(table)} t) s"
    )


def table_checksums(cursor: Any) -> dict[str, dict[str, Any]]:
    cursor.execute(TABLES_SQL)
    tables = cursor.fetchall()
    result: dict[str, dict[str, Any]] = {}
    for schema, table in tables:
        cursor.execute(checksum_sql(schema, table))
        rows, s1, s2 = cursor.fetchone()
        digest = hashlib.md5(f"{rows}:{s1}:{s2}".encode()).hexdigest()
        result[f"{schema}.{table}"] = {"rows": int(rows), "checksum": digest}
    return result


def psycopg_module() -> Any:
    import psycopg  # Debian's python3-psycopg, only needed by the postgres-side subcommands

    return psycopg


def connect(config: dict[str, Any], db: str) -> Any:
    return psycopg_module().connect(
        host=config["pg_host"], port=config["pg_port"], dbname=db, application_name="rave-backup"
    )


def project_databases(config: dict[str, Any]) -> list[str]:
    out = psql(
        config,
        "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1",
    )
    excluded = set(config["database_exclude"])
    return [
        name
        for name in out.split()
        if name not in excluded
        and not name.startswith(SCRATCH_PREFIX)
        and not name.endswith(PRE_RESTORE_SUFFIX)
    ]


# ------------------------------------------------------------ postgres-side subcommands


def cmd_dump(config: dict[str, Any], args: argparse.Namespace) -> int:
    """As postgres: every project database dumped from an exported snapshot, whose checksums are
    taken in the same transaction (so the manifest describes exactly what the dump holds)."""
    out = Path(args.out)
    for entry in out.iterdir():
        # a link is removed, never stat'ed through (its target may be root's: EACCES)
        if not entry.is_symlink() and entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    manifest: dict[str, Any] = {"created": time.time(), "databases": {}}
    result = as_postgres(
        config, ["pg_dumpall", "--globals-only", "--no-comments", "-f", str(out / "globals.sql")]
    )
    if result.returncode != 0:
        raise Failure(f"pg_dumpall --globals-only: {tail(result)}")
    manifest["globals"] = "globals.sql"
    for db in project_databases(config):
        started = time.monotonic()
        with connect(config, db) as conn:
            conn.isolation_level = psycopg_module().IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            with conn.cursor() as cursor:
                cursor.execute("SELECT pg_export_snapshot()")
                snapshot = cursor.fetchone()[0]
                target = out / f"{db}.dump"
                dump = as_postgres(
                    config,
                    ["pg_dump", "-Fc", "-Z0", f"--snapshot={snapshot}", "-f", str(target), db],
                )
                if dump.returncode != 0:
                    raise Failure(f"pg_dump {db}: {tail(dump)}")
                tables = table_checksums(cursor)
                cursor.execute(
                    "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (db,)
                )
                owner = cursor.fetchone()[0]
        manifest["databases"][db] = {
            "file": target.name,
            "owner": owner,
            "bytes": target.stat().st_size,
            "seconds": round(time.monotonic() - started, 3),
            "tables": tables,
        }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    print(json.dumps({db: len(v["tables"]) for db, v in manifest["databases"].items()}))
    return 0


def cmd_checksums(config_path: str, config: dict[str, Any], args: argparse.Namespace) -> int:
    """{table: {rows, checksum}} of a database as JSON (for operators and tests)."""
    if os.geteuid() == 0 and config["pg_user"] != "root":
        print(self_as_postgres(config_path, config, "checksums", "--db", args.db), end="")
        return 0
    with connect(config, args.db) as conn, conn.cursor() as cursor:
        print(json.dumps(table_checksums(cursor), sort_keys=True))
    return 0


# --------------------------------------------------------------------------- metrics


def write_metrics(config: dict[str, Any], name: str, values: dict[str, tuple[str, float]]) -> None:
    """Atomically replace <textfile_dir>/<name>.prom (node exporter's textfile collector)."""
    directory = Path(config["textfile_dir"])
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lines = []
        for metric, (help_text, value) in values.items():
            lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} gauge"]
            lines.append(
                f"{metric} {value:.3f}" if isinstance(value, float) else f"{metric} {value}"
            )
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines) + "\n")
            os.fchmod(handle.fileno(), 0o644)
        os.replace(tmp, directory / f"{name}.prom")
    except OSError as exc:
        warn(f"could not write metrics to {directory}: {exc}")


def load_state(config: dict[str, Any]) -> dict[str, Any]:
    try:
        return json.loads((Path(config["state_dir"]) / "state.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def save_state(config: dict[str, Any], state: dict[str, Any]) -> None:
    path = Path(config["state_dir"]) / "state.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(tmp, path)


def backup_metrics(state: dict[str, Any]) -> dict[str, tuple[str, float]]:
    return {
        "rave_backup_last_success_timestamp_seconds": (
            "Unix time of the last successful backup (0: never).",
            float(state.get("last_success", 0)),
        ),
        "rave_backup_last_run_timestamp_seconds": (
            "Unix time the last backup run ended.",
            float(state.get("last_run", 0)),
        ),
        "rave_backup_last_duration_seconds": (
            "Duration of the last backup run.",
            float(state.get("last_duration", 0)),
        ),
        "rave_backup_last_size_bytes": (
            "Bytes the last successful backup covered (dumps and files).",
            int(state.get("last_size", 0)),
        ),
        "rave_backup_last_added_bytes": (
            "Bytes the last successful backup added to the repository.",
            int(state.get("last_added", 0)),
        ),
        "rave_backup_last_exit_code": (
            "Exit code of the last backup run (0: success).",
            int(state.get("last_exit_code", 0)),
        ),
    }


def repository_metrics(config: dict[str, Any]) -> dict[str, tuple[str, float]]:
    """Where the repository is: the BackupRepositoryOnHost alert stands while it is local."""
    pgbackrest_posix = (
        wal_enabled(config) and config.get("pgbackrest", {}).get("repo_type") == "posix"
    )
    return {
        "rave_backup_repository_local": (
            "1 if the restic repository or pgBackRest's (a posix path) is on the host's own "
            "disk, 0 if both are remote.",
            int(is_local_repository(config["repository"]) or pgbackrest_posix),
        ),
    }


# --------------------------------------------------------------------------- pgBackRest


def wal_enabled(config: dict[str, Any]) -> bool:
    return bool(config.get("wal_archiving"))


def lstat_mode(path: Path) -> int:
    """The path's own st_mode (a link's, never its target's); 0 if it is gone."""
    try:
        return os.lstat(path).st_mode
    except FileNotFoundError:
        return 0


def pgbackrest(
    config: dict[str, Any], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """pgBackRest as postgres through the wrapper that puts the cipher pass into its
    environment (read from the secrets; never on a command line)."""
    result = as_postgres(config, [config["pgbackrest"]["command"], *args])
    if check and result.returncode != 0:
        raise Failure(f"pgbackrest {args[0]}: {tail(result, 10)}")
    return result


def pgbackrest_info(config: dict[str, Any]) -> dict[str, Any]:
    """The stanza's entry of `pgbackrest info` (backups oldest first, archive ranges)."""
    result = pgbackrest(config, "info", "--output=json")
    stanzas = json.loads(result.stdout or "[]")
    return stanzas[0] if stanzas else {}


def pgbackrest_backups(config: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pgbackrest_info(config).get("backup") or [])


def system_identifier(config: dict[str, Any]) -> str:
    """The cluster's system identifier from its control file (no server needed)."""
    result = subprocess.run(
        [config["pgbackrest"]["controldata"], config["pg_data"]],
        text=True,
        capture_output=True,
        check=False,
        env={**os.environ, "LC_ALL": "C"},
    )
    for line in result.stdout.splitlines():
        if line.startswith("Database system identifier:"):
            return line.split(":", 1)[1].strip()
    raise Failure(f"pg_controldata {config['pg_data']}: {tail(result)}")


def own_repository(config: dict[str, Any]) -> None:
    """A posix repository is postgres's (pgBackRest runs as postgres). One put back from a copy
    (the DR drill, an rsync of a remote repository) may carry another host's uids: re-owned,
    without following a link."""
    spec = config["pgbackrest"]
    if spec["repo_type"] != "posix":
        return
    repo = Path(spec["repo_path"])
    if not stat.S_ISDIR(lstat_mode(repo)):
        raise Failure(f"the pgBackRest repository {repo} is not a directory")
    entry = pwd.getpwnam(config["pg_user"])
    if os.lstat(repo).st_uid != entry.pw_uid:  # (pgBackRest's own `latest` links: lchown'd)
        chown_tree(repo, entry.pw_uid, entry.pw_gid)


def write_stanza_marker(config: dict[str, Any]) -> None:
    spec = config["pgbackrest"]
    marker = Path(spec["stanza_marker"])
    # repo_id: the path, or an s3 repository's bucket, endpoint and path
    marker.write_text(f"{system_identifier(config)} {spec.get('repo_id', spec['repo_path'])}\n")
    os.chmod(marker, 0o600)


def cmd_stanza(config: dict[str, Any], args: argparse.Namespace) -> int:
    """stanza-create (idempotent), then check (a WAL segment pushed and found); records the
    cluster it was done for so the deploy runs this only when that changes."""
    if not wal_enabled(config):
        say("WAL archiving is off (backup_wal_archiving): no pgBackRest stanza")
        return 0
    with host_lock(config, wait_seconds=600):
        own_repository(config)
        created = pgbackrest(config, "stanza-create", check=False)
        if created.returncode != 0:
            if "do not match the database" in created.stdout + created.stderr:
                # a new host deployed against the repository of the one it replaces: restore
                # from it (the restored cluster matches the stanza again); nothing is changed
                warn(
                    "the pgBackRest repository holds another cluster's stanza (a host being "
                    "replaced?): restore it with `rave-backup restore --scope host --yes` "
                    "(ops/backup_restore.py); WAL archiving fails until then"
                )
                return 0
            raise Failure(f"pgbackrest stanza-create: {tail(created, 10)}")
        pgbackrest(config, "check")
        write_stanza_marker(config)
    say(f"pgBackRest stanza {config['pgbackrest']['stanza']}: created and checked")
    return 0


def backup_type(config: dict[str, Any], backups: list[dict[str, Any]]) -> str:
    """full when there is none, or the newest full one is older than full_interval_days."""
    fulls = [b for b in backups if b.get("type") == "full"]
    max_age = config["pgbackrest"]["full_interval_days"] * 86400
    if not fulls or time.time() - fulls[-1]["timestamp"]["stop"] >= max_age:
        return "full"
    return "diff"


def pgbackrest_backup(config: dict[str, Any]) -> dict[str, Any]:
    """One pgBackRest backup (full or differential; expire follows with the retention)."""
    kind = backup_type(config, pgbackrest_backups(config))
    say(f"pgBackRest {kind} backup ...")
    started = time.time()
    pgbackrest(config, "backup", f"--type={kind}")
    newest = pgbackrest_backups(config)[-1]
    say(
        f"pgBackRest {newest['type']} backup {newest['label']}: "
        f"{human(newest['info']['repository']['delta'])} into the repository in "
        f"{time.time() - started:.1f} s"
    )
    return newest


def archiver_status(config: dict[str, Any]) -> dict[str, Any] | None:
    """pg_stat_archiver and the segments still waiting; None if PostgreSQL does not answer."""
    try:
        out = psql(
            config,
            "SELECT current_setting('archive_mode'), archived_count, failed_count, "
            "coalesce(extract(epoch FROM last_archived_time), 0), "
            "coalesce(extract(epoch FROM last_failed_time), 0), "
            "(SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') "
            "FROM pg_stat_archiver",
        )
    except Failure:
        return None
    mode, archived, failed, last_archived, last_failed, ready = out.strip().split("|")
    return {
        "enabled": mode in ("on", "always"),
        "archived": int(archived),
        "failed": int(failed),
        "last_archived": float(last_archived),
        "last_failed": float(last_failed),
        "ready": int(ready),
    }


def wal_metrics(config: dict[str, Any]) -> dict[str, tuple[str, float]]:
    status = archiver_status(config)
    state = load_state(config)
    now = time.time()
    values: dict[str, tuple[str, float]] = {
        "rave_wal_archive_up": (
            "1 if PostgreSQL answered the archiver status query.",
            int(status is not None),
        ),
        "rave_wal_archive_metrics_timestamp_seconds": (
            "Unix time these WAL archiving metrics were taken.",
            float(now),
        ),
        "rave_pgbackrest_backup_last_timestamp_seconds": (
            "Unix time the newest pgBackRest backup (full or differential) finished (0: none).",
            float(state.get("pgbackrest_last_backup", 0)),
        ),
    }
    if status is not None:
        values.update(
            {
                "rave_wal_archive_enabled": (
                    "1 if PostgreSQL's archive_mode is on.",
                    int(status["enabled"]),
                ),
                "rave_wal_archive_archived_total": (
                    "WAL files pushed by pgbackrest archive-push since the statistics were "
                    "reset (pg_stat_archiver).",
                    status["archived"],
                ),
                "rave_wal_archive_failed_total": (
                    "Failed archive-push attempts (pg_stat_archiver).",
                    status["failed"],
                ),
                "rave_wal_archive_last_archived_timestamp_seconds": (
                    "Unix time of the last WAL file pushed into the repository (0: none).",
                    status["last_archived"],
                ),
                "rave_wal_archive_last_failed_timestamp_seconds": (
                    "Unix time of the last failed archive-push (0: none).",
                    status["last_failed"],
                ),
                "rave_wal_archive_ready_segments": (
                    "WAL files completed but not pushed yet (pg_wal/archive_status/*.ready).",
                    status["ready"],
                ),
                "rave_wal_archive_lag_seconds": (
                    "Seconds since the last WAL file was pushed into the repository (since the "
                    "metrics time if none was).",
                    max(0.0, now - status["last_archived"]) if status["last_archived"] else now,
                ),
            }
        )
    return values


def cmd_wal_status(config: dict[str, Any], args: argparse.Namespace) -> int:
    if not wal_enabled(config):
        # no stale metrics (their age would raise WalArchivingStalled) once it is turned off
        (Path(config["textfile_dir"]) / "rave_wal_archive.prom").unlink(missing_ok=True)
        say("WAL archiving is off (backup_wal_archiving)")
        return 0
    values = wal_metrics(config)
    write_metrics(config, "rave_wal_archive", values)
    if not os.environ.get("INVOCATION_ID"):  # an operator; the timer's journal stays quiet
        for metric, (_help, value) in values.items():
            say(f"{metric} {value}")
    if "rave_wal_archive_enabled" not in values:  # PostgresDown alerts; not a failed unit too
        warn("PostgreSQL did not answer: rave_wal_archive_up 0")
    return 0


# --------------------------------------------------------------------------- backup


def prepare_dump_dir(config: dict[str, Any]) -> Path:
    dump_dir = Path(config["dump_dir"])
    dump_dir.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
    os.chmod(dump_dir.parent, 0o711)  # postgres must traverse it to write the dumps
    dump_dir.mkdir(mode=0o700, exist_ok=True)
    entry = pwd.getpwnam(config["pg_user"])
    fd = os.open(dump_dir, NOFOLLOW_DIR)  # the directory itself, never a link's target
    try:
        os.fchown(fd, entry.pw_uid, entry.pw_gid)
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return dump_dir


def write_owners(dump_dir: Path) -> None:
    """Names of the uids/gids at backup time: a restore onto a fresh host maps them by name."""
    owners = {
        "users": {str(p.pw_uid): p.pw_name for p in pwd.getpwall()},
        "groups": {str(g.gr_gid): g.gr_name for g in grp.getgrall()},
    }
    # the dump directory is postgres's: a new file renamed into place, never a link followed
    write_under(dump_dir, "owners.json", json.dumps(owners, indent=1, sort_keys=True).encode())


def foreign_in_archive(config: dict[str, Any]) -> list[str]:
    """What the dump directory (postgres writes it) holds besides regular files and
    directories: left out of the snapshot, each with a warning (a restore would refuse them)."""
    found = []
    for path, kind in foreign_entries(Path(config["dump_dir"])):
        warn(f"{path} is {kind}: left out of the snapshot (only regular files are)")
        found.append(path)
    return found


def restic_literal(path: str) -> str:
    """An --exclude pattern matching exactly this path (restic's glob characters escaped)."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", path)


def backup_once(config_path: str, config: dict[str, Any], restic: Restic) -> dict[str, Any]:
    restic.open(rekey=True)  # a rotated password the deploy has not moved in yet: moved here
    restic.unlock_stale()
    dump_dir = prepare_dump_dir(config)
    if config["databases"]:
        say("dumping databases ...")
        out = self_as_postgres(config_path, config, "dump", "--out", str(dump_dir))
        say(f"dumped (tables per database): {out.strip()}")
    write_owners(dump_dir)
    paths = [str(dump_dir)] + [p for p in config["paths"] if os.path.lexists(p)]
    pgbackrest_newest: dict[str, Any] | None = None
    if config["databases"] and wal_enabled(config):
        pgbackrest_newest = pgbackrest_backup(config)
    missing = [p for p in config["paths"] if not os.path.lexists(p)]
    if missing:
        say("not present on this host (skipped): " + ", ".join(missing))
    args = ["backup", "--json", "--host", config["hostname"], "--tag", "rave"]
    for pattern in config["exclude"]:
        args += ["--exclude", pattern]
    for path in foreign_in_archive(config):
        args += ["--exclude", restic_literal(path)]
    say("backing up: " + ", ".join(minimal_paths(paths)))
    process = restic.popen(*args, *minimal_paths(paths))
    summary: dict[str, Any] = {}
    assert process.stdout is not None
    for line in process.stdout:
        with contextlib.suppress(ValueError):
            message = json.loads(line)
            if message.get("message_type") == "summary":
                summary = message
            elif message.get("message_type") == "error":
                warn(f"restic: {message.get('error')} ({message.get('item')})")
    code = process.wait()
    for dump in dump_dir.glob("*.dump"):  # in the snapshot now (or failed): free the disk
        dump.unlink()
    if code != 0:
        reason = f"killed by signal {-code}" if code < 0 else f"exit {code}"
        raise Failure(
            f"restic backup did not complete ({reason})", 128 - code if code < 0 else code
        )
    if not summary:
        raise Failure("restic backup printed no summary")
    if pgbackrest_newest is not None:
        summary["pgbackrest_last_backup"] = pgbackrest_newest["timestamp"]["stop"]
        summary["pgbackrest_label"] = pgbackrest_newest["label"]
    return summary


def cmd_run(config_path: str, config: dict[str, Any], args: argparse.Namespace) -> int:
    restic = Restic(config, args.password_file)
    state = load_state(config)
    started = time.time()
    code = 0
    try:
        with host_lock(config, wait_seconds=3600):
            summary = backup_once(config_path, config, restic)
    except Failure as failure:
        code = failure.code
        error(f"backup failed: {failure}")
    except Exception as exc:  # anything else is still a failed backup
        code = EXIT_FAILED
        traceback.print_exc()
        error(f"backup failed: {exc!r}")
    finished = time.time()
    state.update(last_run=finished, last_duration=finished - started, last_exit_code=code)
    if code == 0:
        state.update(
            last_success=finished,
            last_size=summary.get("total_bytes_processed", 0),
            last_added=summary.get("data_added", 0),
            last_snapshot=summary.get("snapshot_id", ""),
        )
        for key in ("pgbackrest_last_backup", "pgbackrest_label"):
            if key in summary:
                state[key] = summary[key]
        say(
            f"rave-backup: OK: snapshot {summary.get('snapshot_id', '?')[:8]} saved in "
            f"{finished - started:.1f} s: {human(summary.get('total_bytes_processed', 0))} "
            f"covered, {human(summary.get('data_added', 0))} added to the repository"
        )
    save_state(config, state)
    write_metrics(config, "rave_backup", backup_metrics(state))
    write_metrics(config, "rave_backup_repository", repository_metrics(config))
    if wal_enabled(config):
        write_metrics(config, "rave_wal_archive", wal_metrics(config))
    return code


def cmd_init(config: dict[str, Any], args: argparse.Namespace) -> int:
    restic = Restic(config, args.password_file)
    with host_lock(config, wait_seconds=600):
        status = restic.status()
        if status == "missing":
            repo = config["repository"]
            if is_local_repository(repo):
                Path(repo).mkdir(mode=0o700, parents=True, exist_ok=True)
            restic.run("init")
            say(f"repository {repo} initialized")
        else:
            converge_keys(config, restic, status)  # raises when no password opens it
            say(f"repository {config['repository']} already initialized")
        write_marker(config, restic)
    Path(config["cache_dir"]).mkdir(mode=0o700, parents=True, exist_ok=True)
    write_metrics(config, "rave_backup_repository", repository_metrics(config))
    return 0


def cmd_rekey(config: dict[str, Any], args: argparse.Namespace) -> int:
    restic = Restic(config, args.password_file)
    with host_lock(config, wait_seconds=600):
        converge_keys(config, restic)
        write_marker(config, restic)
    say(f"the current password opens {config['repository']}")
    return 0


def cmd_now(config: dict[str, Any], args: argparse.Namespace) -> int:
    unit = config["unit"]
    say(f"starting {unit}.service (waits for it to finish) ...")
    started = time.time()
    result = subprocess.run(["systemctl", "start", f"{unit}.service"], check=False)
    invocation = subprocess.run(
        ["systemctl", "show", "-p", "InvocationID", "--value", f"{unit}.service"],
        text=True,
        capture_output=True,
        check=False,
    ).stdout.strip()
    journal = subprocess.run(
        ["journalctl", "--no-pager", "-o", "cat", f"_SYSTEMD_INVOCATION_ID={invocation}"],
        text=True,
        capture_output=True,
        check=False,
    ).stdout
    say(journal.rstrip())
    state = load_state(config)
    ok = result.returncode == 0 and state.get("last_exit_code") == 0
    if ok:
        say(
            f"{unit}.service: SUCCEEDED in {time.time() - started:.1f} s "
            f"(snapshot {state.get('last_snapshot', '?')[:8]}, "
            f"{human(state.get('last_size', 0))} covered, "
            f"{human(state.get('last_added', 0))} added)"
        )
    else:
        say(
            f"{unit}.service: FAILED (exit {state.get('last_exit_code')}); see journalctl -u {unit}"
        )
    return 0 if ok else EXIT_FAILED


def cmd_list(config: dict[str, Any], args: argparse.Namespace) -> int:
    restic = Restic(config, args.password_file)
    restic.open()
    snapshots = restic.snapshots()
    say(
        f"repository {config['repository']}: {len(snapshots)} snapshot(s) of host "
        f"{config['hostname']}"
    )
    say(f"{'ID':<10} {'TIME (UTC)':<20} {'TAGS':<8} PATHS")
    for snap in snapshots:
        when = snap["time"][:19].replace("T", " ")
        say(
            f"{snap['short_id']:<10} {when:<20} {','.join(snap.get('tags') or []):<8} "
            f"{len(snap['paths'])} paths"
        )
    if snapshots:
        say(f"latest: {snapshots[-1]['short_id']}")
    return 0


def cmd_ls(config: dict[str, Any], args: argparse.Namespace) -> int:
    restic = Restic(config, args.password_file)
    restic.open()
    snapshot = restic.resolve(args.snapshot)
    result = restic.run("ls", "--no-lock", snapshot["id"])
    print(result.stdout, end="")
    return 0


def cmd_check(config: dict[str, Any], args: argparse.Namespace) -> int:
    restic = Restic(config, args.password_file)
    with host_lock(config, wait_seconds=args.wait):
        restic.open()
        restic.unlock_stale()
        extra = [f"--read-data-subset={args.read_data_subset}"] if args.read_data_subset else []
        result = restic.run("check", *extra, check=False)
    if result.returncode != 0:
        raise Failure(f"restic check found problems: {tail(result, 20)}")
    say("restic check: no errors were found")
    pgbackrest_check(config)
    return 0


def pgbackrest_check(config: dict[str, Any], verify: bool = False) -> None:
    """`pgbackrest check` (the configuration, and a WAL segment pushed and found in the
    repository); with verify also `pgbackrest verify` (every file of the repository read
    and checked against its checksum)."""
    if not (config["databases"] and wal_enabled(config)):
        return
    pgbackrest(config, "check")
    say("pgbackrest check: WAL archiving and the repository work")
    if verify:
        result = pgbackrest(config, "verify", "--log-level-console=info", check=False)
        if result.returncode != 0:
            raise Failure(f"pgbackrest verify found problems: {tail(result, 20)}")
        say("pgbackrest verify: no errors were found")


def cmd_maintain(config: dict[str, Any], args: argparse.Namespace) -> int:
    restic = Restic(config, args.password_file)
    keep = config["keep"]
    code = 0
    try:
        with host_lock(config, wait_seconds=3600):
            restic.open()
            restic.unlock_stale()
            policy = [f"--keep-{period}={count}" for period, count in keep.items() if count > 0]
            say("forget --prune " + " ".join(policy))
            result = restic.run(
                "forget", "--prune", "--host", config["hostname"], *policy, check=False
            )
            say((result.stdout or "").rstrip())
            if result.returncode != 0:
                raise Failure(f"restic forget --prune: {tail(result)}")
            check = restic.run("check", check=False)
            if check.returncode != 0:
                raise Failure(f"restic check found problems: {tail(check, 20)}")
            say("restic check: no errors were found")
    except Failure as failure:
        code = failure.code
        error(f"maintenance failed: {failure}")
    state = load_state(config)
    state["maintenance_exit_code"] = code
    if code == 0:
        state["maintenance_success"] = time.time()
    save_state(config, state)
    write_metrics(
        config,
        "rave_backup_maintenance",
        {
            "rave_backup_maintenance_last_success_timestamp_seconds": (
                "Unix time of the last successful forget --prune and check.",
                float(state.get("maintenance_success", 0)),
            ),
            "rave_backup_maintenance_last_exit_code": (
                "Exit code of the last maintenance run (0: success).",
                code,
            ),
        },
    )
    return code


# --------------------------------------------------------------------------- restore


def restore_to_temp(
    config: dict[str, Any], restic: Restic, snapshot: dict[str, Any], only: list[str] | None
) -> Path:
    """The snapshot (or only the given paths of it) under <state_dir>/restore."""
    temp = Path(config["state_dir"]) / "restore"
    if temp.exists():
        shutil.rmtree(temp)
    temp.mkdir(mode=0o700)
    args = ["restore", snapshot["id"], "--target", str(temp)]
    for path in only or []:
        args += ["--include", path]
    say(f"restoring snapshot {snapshot['short_id']} ({snapshot['time'][:19]}) into {temp} ...")
    restic.run(*args)
    return temp


def refuse_foreign(temp: Path, trees: list[Path], config: dict[str, Any]) -> list[Path]:
    """The restored archive trees under temp that exist; a Failure naming the path if one of
    them (or a directory on the way to it) is, or holds, anything but regular files and
    directories: a link would give its target to postgres, so a restore stops here."""
    user = config["pg_user"]
    present = []
    for tree in trees:
        current = temp
        for part in tree.relative_to(temp).parts:
            current = current / part
            mode = lstat_mode(current)
            if not mode:
                break  # not in the snapshot
            if not stat.S_ISDIR(mode):
                raise Failure(
                    f"refusing to hand the restored {current} to {user}: it is "
                    f"{file_kind(mode)}, not a directory (nothing was changed)"
                )
        else:
            present.append(tree)
    for tree in present:
        foreign = foreign_entries(tree)
        if foreign:
            more = f" (and {len(foreign) - 5} more)" if len(foreign) > 5 else ""
            raise Failure(
                f"refusing to hand the restored {tree} to {user}: "
                + "; ".join(f"{path} is {kind}" for path, kind in foreign[:5])
                + more
                + " (only regular files and directories are; nothing was changed)"
            )
    return present


def hand_to_postgres(temp: Path, trees: list[Path], config: dict[str, Any]) -> None:
    """pg_restore, tar and restore_command run as postgres: give it the restored archive trees
    (whatever their uid was) and let it reach them. Until then only root can enter temp; the
    trees are checked (refuse_foreign), re-owned without following a link, deepest first, and
    only then are the directories on the way opened (0711)."""
    entry = pwd.getpwnam(config["pg_user"])
    chmod_directory(temp, 0o700)
    present = refuse_foreign(temp, trees, config)
    for tree in present:
        chown_tree(tree, entry.pw_uid, entry.pw_gid)
    for tree in present:
        for directory in reversed(tree.relative_to(temp).parents):  # temp, temp/var, ...
            chmod_directory(temp / directory, 0o711)


def read_manifest(temp: Path, config: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    dump_dir = temp / config["dump_dir"].lstrip("/")
    hand_to_postgres(temp, [dump_dir], config)
    try:
        manifest = json.loads(read_under(dump_dir, "manifest.json"))
    except FileNotFoundError:
        raise Failure(
            "the snapshot holds no database manifest (taken without databases?)"
        ) from None
    for db, info in manifest["databases"].items():
        listing = as_postgres(config, ["pg_restore", "--list", str(dump_dir / info["file"])])
        if listing.returncode != 0:
            raise Failure(f"the dump of {db} in the snapshot is unreadable: {tail(listing)}")
    return dump_dir, manifest


def compare(expected: dict[str, dict[str, Any]], actual: dict[str, dict[str, Any]]) -> list[str]:
    """Differences between two {table: {rows, checksum}} maps (empty: identical)."""
    problems = []
    for table in sorted(set(expected) | set(actual)):
        if table not in actual:
            problems.append(f"{table}: missing")
        elif table not in expected:
            problems.append(f"{table}: unexpected table")
        elif expected[table] != actual[table]:
            problems.append(
                f"{table}: rows {expected[table]['rows']} -> {actual[table]['rows']}, "
                f"checksum {expected[table]['checksum'][:12]} -> {actual[table]['checksum'][:12]}"
            )
    return problems


def checksums_of(config_path: str, config: dict[str, Any], db: str) -> dict[str, dict[str, Any]]:
    return json.loads(self_as_postgres(config_path, config, "checksums", "--db", db))


def db_exists(config: dict[str, Any], db: str) -> bool:
    return (
        psql(config, f"SELECT 1 FROM pg_database WHERE datname = {quote_literal(db)}").strip()
        == "1"
    )


def terminate(config: dict[str, Any], db: str) -> None:
    psql(
        config,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        f"WHERE datname = {quote_literal(db)} AND pid <> pg_backend_pid()",
    )


def drop_database(config: dict[str, Any], db: str) -> None:
    terminate(config, db)
    psql(config, f"DROP DATABASE IF EXISTS {quote_ident(db)}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify_identity_files(temp: Path) -> tuple[int, int]:
    """The host's identity and secrets file are in the snapshot: (missing, differing from live)."""
    missing = differing = 0
    for path in IDENTITY_FILES:
        restored, live = temp / path.lstrip("/"), Path(path)
        if not os.path.lexists(restored):
            if live.exists():
                missing += 1
                say(f"FILE {path}: MISSING from the snapshot")
            continue
        # the restored copy is read without following a link (it would read a live file)
        same = live.exists() and sha256(read_under(temp, path.lstrip("/"))) == sha256(
            live.read_bytes()
        )
        differing += not same
        say(f"FILE {path}: restored, {'same as live' if same else 'live differs'}")
    return missing, differing


def cmd_verify(config_path: str, config: dict[str, Any], args: argparse.Namespace) -> int:
    restic = Restic(config, args.password_file)
    started = time.time()
    with host_lock(config, wait_seconds=args.wait):
        restic.open()
        restic.unlock_stale()
        snapshot = restic.resolve(args.snapshot)
        say(f"verifying snapshot {snapshot['short_id']} of {snapshot['time'][:19]} (UTC)")
        check = restic.run("check", check=False)
        if check.returncode != 0:
            raise Failure(f"restic check found problems: {tail(check, 20)}")
        say("restic check: no errors were found")
        pgbackrest_check(config, verify=True)
        temp = restore_to_temp(config, restic, snapshot, [config["dump_dir"], *IDENTITY_FILES])
        try:
            dump_dir, manifest = read_manifest(temp, config)
            failures, live_differences = verify_identity_files(temp)
            live_differences = 0
            header = f"{'TABLE':<40} {'ROWS@BACKUP':>12} {'RESTORED':>10} {'LIVE':>10}  RESULT"
            for db, info in sorted(manifest["databases"].items()):
                scratch = SCRATCH_PREFIX + db
                drop_database(config, scratch)
                psql(config, f"CREATE DATABASE {quote_ident(scratch)} TEMPLATE template0")
                try:
                    restore = as_postgres(
                        config,
                        [
                            "pg_restore",
                            "--no-owner",
                            "--no-privileges",
                            "--exit-on-error",
                            "-d",
                            scratch,
                            str(dump_dir / info["file"]),
                        ],
                    )
                    if restore.returncode != 0:
                        raise Failure(f"pg_restore of {db} into {scratch}: {tail(restore)}")
                    restored = checksums_of(config_path, config, scratch)
                finally:
                    drop_database(config, scratch)
                live = checksums_of(config_path, config, db) if db_exists(config, db) else {}
                say(f"database {db}: dump {human(info['bytes'])}, restored into {scratch}")
                say(header)
                for table in sorted(set(info["tables"]) | set(restored)):
                    want = info["tables"].get(table)
                    got = restored.get(table)
                    now = live.get(table)
                    ok = want == got
                    same_live = now == got
                    failures += not ok
                    live_differences += not same_live
                    result = "OK" if ok else "MISMATCH"
                    result += "" if same_live else " (live differs: changed since the backup)"
                    say(
                        f"{table:<40} {want['rows'] if want else '-':>12} "
                        f"{got['rows'] if got else '-':>10} {now['rows'] if now else '-':>10}  "
                        f"{result}"
                    )
        finally:
            shutil.rmtree(temp, ignore_errors=True)
    elapsed = time.time() - started
    if failures:
        raise Failure(
            f"verify: {failures} table(s) or file(s) differ from the backup", EXIT_MISMATCH
        )
    if args.strict_live and live_differences:
        raise Failure(
            f"verify: {live_differences} table(s) or file(s) differ between the restore and "
            "the live host",
            EXIT_MISMATCH,
        )
    say(
        f"VERIFIED: snapshot {snapshot['short_id']} restores to identical tables and files "
        f"(row counts and checksums) in {elapsed:.1f} s"
    )
    return 0


def remap_owners(temp: Path, owners_file: Path) -> int:
    """chown restored files from the backed-up host's uids to this host's, by name."""
    try:
        owners = json.loads(read_under(owners_file.parent, owners_file.name))
    except FileNotFoundError:
        return 0
    users = {int(uid): name for uid, name in owners["users"].items()}
    groups = {int(gid): name for gid, name in owners["groups"].items()}

    def local_uid(uid: int) -> int:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(users[uid]).pw_uid
        return uid

    def local_gid(gid: int) -> int:
        with contextlib.suppress(KeyError):
            return grp.getgrnam(groups[gid]).gr_gid
        return gid

    changed = 0
    for root, dirs, files in os.walk(temp):
        for name in dirs + files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            uid, gid = local_uid(st.st_uid), local_gid(st.st_gid)
            if (uid, gid) != (st.st_uid, st.st_gid):
                os.lchown(path, uid, gid)
                if not os.path.islink(path):
                    os.chmod(path, st.st_mode & 0o7777)  # chown clears setuid/setgid bits
                changed += 1
    return changed


def unit_active(unit: str) -> bool:
    return subprocess.run(["systemctl", "is-active", "--quiet", unit], check=False).returncode == 0


def unit_exists(unit: str) -> bool:
    out = subprocess.run(
        ["systemctl", "show", "-p", "LoadState", "--value", unit],
        text=True,
        capture_output=True,
        check=False,
    ).stdout.strip()
    return out == "loaded"


def restore_databases(
    config_path: str,
    config: dict[str, Any],
    dump_dir: Path,
    manifest: dict[str, Any],
    with_globals: bool,
) -> None:
    clients = [u for u in config["db_client_units"] if unit_active(u)]
    if clients:
        say("stopping database clients: " + ", ".join(clients))
        subprocess.run(["systemctl", "stop", *clients], check=True)
    try:
        if with_globals:
            result = as_postgres(
                config, ["psql", "-X", "-q", "-d", "postgres", "-f", str(dump_dir / "globals.sql")]
            )
            skipped = sum("already exists" in line for line in result.stderr.splitlines())
            say(f"roles restored from globals.sql ({skipped} already present, kept and updated)")
        for db, info in sorted(manifest["databases"].items()):
            started = time.monotonic()
            aside = db + PRE_RESTORE_SUFFIX
            drop_database(config, aside)
            existed = db_exists(config, db)
            if existed:
                terminate(config, db)
                psql(config, f"ALTER DATABASE {quote_ident(db)} RENAME TO {quote_ident(aside)}")
            restore = as_postgres(
                config,
                [
                    "pg_restore",
                    "--create",
                    "--exit-on-error",
                    "-d",
                    "postgres",
                    str(dump_dir / info["file"]),
                ],
            )
            problems = (
                [f"pg_restore: {tail(restore)}"]
                if restore.returncode != 0
                else compare(info["tables"], checksums_of(config_path, config, db))
            )
            if problems:
                drop_database(config, db)
                if existed:
                    psql(config, f"ALTER DATABASE {quote_ident(aside)} RENAME TO {quote_ident(db)}")
                raise Failure(
                    f"restore of database {db} failed, the previous database was put back: "
                    + "; ".join(problems)
                )
            if existed:
                drop_database(config, aside)
            rows = sum(t["rows"] for t in info["tables"].values())
            say(
                f"database {db}: restored {len(info['tables'])} tables, {rows} rows, "
                f"checksums identical to the backup ({time.monotonic() - started:.1f} s)"
            )
    finally:
        if clients:
            say("starting database clients: " + ", ".join(clients))
            subprocess.run(["systemctl", "start", *clients], check=False)


# ------------------------------------------------------------ point-in-time restore


def parse_time(value: str) -> float:
    """Unix time of an ISO 8601 time with a zone (restic's nanoseconds cut to microseconds)."""
    match = re.match(r"^(\d{4}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d)?)(\.\d+)?(.*)$", value.strip())
    if not match:
        raise Failure(f"not an ISO 8601 time: {value!r}", EXIT_USAGE)
    zone = match.group(3).strip()
    zone = "+00:00" if zone in ("Z", "z") else zone
    fraction = (match.group(2) or "")[:7]
    try:
        parsed = datetime.fromisoformat(match.group(1) + fraction + zone)
    except ValueError:
        raise Failure(f"not an ISO 8601 time: {value!r}", EXIT_USAGE) from None
    if parsed.tzinfo is None:
        raise Failure(f"{value!r} has no time zone (add +00:00 or Z)", EXIT_USAGE)
    return parsed.timestamp()


def utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def postgres_log_tail(config: dict[str, Any], lines: int = 8) -> str:
    version = Path(config["pg_data"]).parent.name
    log = f"/var/log/postgresql/postgresql-{version}-main.log"
    # read as postgres: the log is its file (a link there must not show root's files)
    result = as_postgres(config, ["tail", "-n", str(lines), log])
    if result.returncode != 0:
        return "(no log)"
    return " | ".join(result.stdout.splitlines())


def wait_promoted(config: dict[str, Any], timeout: float) -> None:
    """Until recovery reached the target and the server was promoted (accepts writes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = as_postgres(config, ["psql", "-X", "-At", "-c", "SELECT pg_is_in_recovery()"])
        if result.returncode == 0 and result.stdout.strip() == "f":
            return
        if result.returncode != 0 and not unit_active(f"{config['pg_unit']}.service"):
            raise Failure(f"PostgreSQL stopped during recovery: {postgres_log_tail(config)}")
        time.sleep(1)
    raise Failure(f"recovery did not finish in {timeout:.0f} s: {postgres_log_tail(config)}")


def postgres_dir(path: Path, config: dict[str, Any]) -> None:
    entry = pwd.getpwnam(config["pg_user"])
    path.mkdir(mode=0o700, parents=True)
    fd = os.open(path, NOFOLLOW_DIR)  # the new directory, not what may have replaced it
    try:
        os.fchown(fd, entry.pw_uid, entry.pw_gid)
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def remove_aside(path: Path) -> None:
    """Remove a directory moved aside (a link there is removed, never followed)."""
    if stat.S_ISDIR(lstat_mode(path)):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def pgbackrest_time(seconds: float) -> str:
    """A time as pgBackRest's --target and PostgreSQL's recovery_target_time read it."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "+00"


def backup_for_time(config: dict[str, Any], target: float) -> dict[str, Any]:
    """The newest pgBackRest backup that finished before the target time."""
    backups = pgbackrest_backups(config)
    if not backups:
        raise Failure("the pgBackRest repository holds no backup of this stanza", EXIT_USAGE)
    usable = [b for b in backups if b["timestamp"]["stop"] <= target]
    if not usable:
        raise Failure(
            f"every pgBackRest backup finished after the target time; the earliest point it can "
            f"restore is {utc(backups[0]['timestamp']['stop'])}",
            EXIT_USAGE,
        )
    return usable[-1]


def archive_end(config: dict[str, Any]) -> str:
    """The newest WAL segment in the repository ('-' if none)."""
    archives = pgbackrest_info(config).get("archive") or []
    return max((a.get("max") or "-" for a in archives), default="-")


def restore_cluster(
    config_path: str,
    config: dict[str, Any],
    chosen: dict[str, Any] | None,
    target: float | None,
    timeout: float,
) -> None:
    """Replace the cluster by a pgBackRest restore: to the target time (from the chosen backup),
    or, without one, to the end of the WAL in the repository (a lost host: the last pushed
    segment). The current data directory is moved aside first and put back if it fails."""
    unit = f"{config['pg_unit']}.service"
    pg_data = Path(config["pg_data"])
    aside = Path(str(pg_data) + PRE_RESTORE_SUFFIX)
    wrapper = config["pgbackrest"]["command"]
    # archive-get through the wrapper too (the cipher pass); pgBackRest writes these recovery
    # settings into postgresql.auto.conf and creates recovery.signal
    options = ["restore", f'--recovery-option=restore_command={wrapper} archive-get %f "%p"']
    if target is not None and chosen is not None:
        options += [
            f"--set={chosen['label']}",
            "--type=time",
            f"--target={pgbackrest_time(target)}",
            "--target-action=promote",
        ]
    clients = [u for u in config["db_client_units"] if unit_active(u)]
    if clients:
        say("stopping database clients: " + ", ".join(clients))
        subprocess.run(["systemctl", "stop", *clients], check=True)
    started = time.monotonic()
    try:
        say(f"stopping {unit}; moving {pg_data} aside")
        subprocess.run(["systemctl", "stop", unit], check=True)
        remove_aside(aside)
        if os.path.lexists(pg_data):
            pg_data.rename(aside)
        try:
            postgres_dir(pg_data, config)
            what = f"to {utc(target)}" if target is not None else "to the end of the archived WAL"
            say(f"pgBackRest restore {what} ...")
            pgbackrest(config, *options)
            subprocess.run(["systemctl", "start", unit], check=False)
            wait_promoted(config, timeout)
        except (Failure, OSError, subprocess.CalledProcessError) as failure:
            subprocess.run(["systemctl", "stop", unit], check=False)
            with contextlib.suppress(OSError):
                remove_aside(pg_data)
            if os.path.lexists(aside):
                aside.rename(pg_data)
            subprocess.run(["systemctl", "start", unit], check=False)
            raise Failure(f"restore failed, the previous cluster was put back: {failure}") from None
        shutil.rmtree(aside, ignore_errors=True)
        write_stanza_marker(config)
        say(f"recovered and promoted in {time.monotonic() - started:.1f} s")
        for db in project_databases(config):
            tables = checksums_of(config_path, config, db)
            rows = sum(t["rows"] for t in tables.values())
            say(f"database {db}: {len(tables)} tables, {rows} rows")
    finally:
        if clients:
            say("starting database clients: " + ", ".join(clients))
            subprocess.run(["systemctl", "start", *clients], check=False)


# restic snapshots taken before pgBackRest held the hand-written WAL spool and base backups:
# never restored as files
LEGACY_ARCHIVE = ("/var/lib/rave-backup/wal", "/var/lib/rave-backup/base")


def restore_files(temp: Path, snapshot: dict[str, Any], config: dict[str, Any]) -> list[str]:
    restored = []
    archive = {os.path.normpath(p) for p in (config["dump_dir"], *LEGACY_ARCHIVE)}
    for path in snapshot["paths"]:
        if os.path.normpath(path) in archive:
            continue  # restored as databases, never as files
        source = temp / path.lstrip("/")
        if not os.path.lexists(source):
            continue
        # --remove-destination: a link a service account left in its live directory is
        # replaced, never written through (with -a, cp refuses a directory over a link)
        if source.is_dir() and not source.is_symlink():
            Path(path).mkdir(parents=True, exist_ok=True)
            subprocess.run(
                ["cp", "-a", "--remove-destination", f"{source}/.", f"{path}/"], check=True
            )
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["cp", "-a", "--remove-destination", str(source), path], check=True)
        restored.append(path)
    return restored


def cmd_restore(config_path: str, config: dict[str, Any], args: argparse.Namespace) -> int:
    restic = Restic(config, args.password_file)
    started = time.time()
    target = parse_time(args.target_time) if args.target_time else None
    if target is not None and not wal_enabled(config):
        raise Failure("WAL archiving is off on this host: no point-in-time restore", EXIT_USAGE)
    # the whole cluster from pgBackRest: to a time, or (a host restore) to its newest WAL
    cluster = target is not None or (args.scope == "host" and wal_enabled(config))
    with host_lock(config, wait_seconds=args.wait):
        restic.open()  # a wrong password stops here, before anything is touched
        restic.unlock_stale()
        snapshot = restic.resolve(args.snapshot)
        only = [config["dump_dir"]] if args.scope == "database" and not cluster else None
        if args.scope == "database" and cluster:
            only = [config["dump_dir"] + "/owners.json"]
        chosen = backup_for_time(config, target) if target is not None else None
        temp = restore_to_temp(config, restic, snapshot, only)
        try:
            if args.scope == "host":
                owners = temp / config["dump_dir"].lstrip("/") / "owners.json"
                remapped = remap_owners(temp, owners)
                if remapped:
                    say(f"{remapped} restored files re-owned to this host's user and group ids")
            archive = {os.path.normpath(p) for p in (config["dump_dir"], *LEGACY_ARCHIVE)}
            if not cluster:
                dump_dir, manifest = read_manifest(temp, config)
                plan = [
                    f"databases {', '.join(sorted(manifest['databases']))} "
                    "(each replaced by its dump; the old one is put back if the restore fails)"
                ]
                if args.scope == "host":
                    plan.insert(0, "roles (globals.sql)")
            elif chosen is not None and target is not None:
                plan = [
                    f"the whole PostgreSQL cluster (every database and role) to {utc(target)}: "
                    f"pgBackRest {chosen['type']} backup {chosen['label']} (finished "
                    f"{utc(chosen['timestamp']['stop'])}), then the archived WAL replayed up to "
                    "that time (the current cluster is put back if it fails)"
                ]
            else:
                backups = pgbackrest_backups(config)
                if not backups:
                    raise Failure("the pgBackRest repository holds no backup", EXIT_USAGE)
                plan = [
                    f"the whole PostgreSQL cluster (every database and role): pgBackRest "
                    f"{backups[-1]['type']} backup {backups[-1]['label']}, then every archived "
                    f"WAL file up to {archive_end(config)} (the current cluster is put back if "
                    "it fails)"
                ]
            if args.scope == "host":
                plan.insert(
                    0,
                    "files: "
                    + ", ".join(p for p in snapshot["paths"] if os.path.normpath(p) not in archive),
                )
            what = f"snapshot {snapshot['short_id']}" + (
                f", point in time {utc(target)}" if target is not None else ""
            )
            say(f"restore plan ({what}, scope {args.scope}):")
            for item in plan:
                say(f"  - {item}")
            if not args.yes:
                say("dry run: nothing changed (pass --yes / --data backup_restore_confirm=true)")
                return 0
            if args.scope == "host":
                for path in restore_files(temp, snapshot, config):
                    say(f"restored {path}")
            if not cluster:
                restore_databases(
                    config_path, config, dump_dir, manifest, with_globals=args.scope == "host"
                )
            else:
                restore_cluster(config_path, config, chosen, target, args.recovery_timeout)
        finally:
            shutil.rmtree(temp, ignore_errors=True)
    if args.scope == "host":
        restart_after_host_restore(config)
    say(f"RESTORED: {what} (scope {args.scope}) in {time.time() - started:.1f} s")
    return 0


def restart_after_host_restore(config: dict[str, Any]) -> None:
    secrets_unit = config["secrets_unit"]
    if unit_exists(f"{secrets_unit}.service"):
        say(f"restarting {secrets_unit} (secrets file and host key restored)")
        subprocess.run(["systemctl", "restart", f"{secrets_unit}.service"], check=True)
    say("reloading ssh (host keys restored)")
    subprocess.run(["systemctl", "reload-or-restart", "ssh.service"], check=False)
    units = [u for u in config["restart_units"] if unit_exists(f"{u}.service")]
    if units:
        say("restarting (if running): " + ", ".join(units))
        subprocess.run(["systemctl", "try-restart", *[f"{u}.service" for u in units]], check=False)


# --------------------------------------------------------------------------- main


def on_sigterm(*_: Any) -> None:
    raise Failure("terminated (SIGTERM)", 143)


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="rave-backup", description=__doc__.splitlines()[0])
    main.add_argument("--config", default=CONFIG)
    main.add_argument(
        "--password-file", default=None, help="read the repository password from this file instead"
    )
    sub = main.add_subparsers(dest="command", required=True)
    sub.add_parser("init")
    sub.add_parser("rekey")
    sub.add_parser("run")
    sub.add_parser("now")
    sub.add_parser("list")
    sub.add_parser("status")
    sub.add_parser("databases")
    sub.add_parser("wal-status")
    sub.add_parser("stanza")
    ls = sub.add_parser("ls")
    ls.add_argument("--snapshot", default="latest")
    check = sub.add_parser("check")
    check.add_argument("--read-data-subset", default="")
    check.add_argument("--wait", type=int, default=1800)
    sub.add_parser("maintain")
    verify = sub.add_parser("verify")
    verify.add_argument("--snapshot", default="latest")
    verify.add_argument(
        "--strict-live",
        action="store_true",
        help="also fail when the live database differs from the snapshot",
    )
    verify.add_argument("--wait", type=int, default=1800)
    restore = sub.add_parser("restore")
    restore.add_argument("--snapshot", default="latest")
    restore.add_argument("--scope", choices=("database", "host"), default="database")
    restore.add_argument("--yes", action="store_true", help="really restore (else a dry run)")
    restore.add_argument(
        "--target-time",
        default=None,
        help="point-in-time restore of the cluster to this ISO 8601 time (with a zone)",
    )
    restore.add_argument("--recovery-timeout", type=float, default=3600)
    restore.add_argument("--wait", type=int, default=1800)
    dump = sub.add_parser("dump")
    dump.add_argument("--out", required=True)
    checksums = sub.add_parser("checksums")
    checksums.add_argument("--db", required=True)
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        config = load_config(args.config)
        command = args.command
        if command == "run":
            return cmd_run(args.config, config, args)
        if command == "dump":
            return cmd_dump(config, args)
        if command == "checksums":
            return cmd_checksums(args.config, config, args)
        if command == "wal-status":
            return cmd_wal_status(config, args)
        if command == "stanza":
            return cmd_stanza(config, args)
        if command == "databases":
            print("\n".join(project_databases(config)))
            return 0
        if command == "status":
            print(Restic(config, args.password_file).status())
            return 0
        if command in ("verify", "restore"):
            handler = cmd_verify if command == "verify" else cmd_restore
            return handler(args.config, config, args)
        handlers = {
            "init": cmd_init,
            "rekey": cmd_rekey,
            "now": cmd_now,
            "list": cmd_list,
            "check": cmd_check,
            "maintain": cmd_maintain,
            "ls": cmd_ls,
        }
        return handlers[command](config, args)
    except Failure as failure:
        error(str(failure))
        return failure.code


if __name__ == "__main__":
    sys.exit(main())
