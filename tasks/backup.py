"""Backups: pgBackRest for the PostgreSQL cluster (WAL pushed as it is written, full and
differential backups, point-in-time restore) and restic for the files and consistent dumps,
both on one systemd timer.

The host script files/backup/rave_backup.py (installed as rave-backup) does the work: backup,
maintenance, verify, restore. This task installs it, its configuration (/etc/rave/backup.json,
derived from the settings and rave.components), pgBackRest's configuration and stanza, the units
and timers with the project's sandbox, and initialises the restic repository once (a fact tells
whether it exists). See docs/backup.md.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from pyinfra import host
from pyinfra.api import FactBase, deploy
from pyinfra.operations import python, server, systemd
from pyinfra.operations.util import any_changed

from rave import observability as obs
from rave.components import COMPONENTS, backup_paths, component, secret_readers
from rave.deploykit import (
    ensure_directory,
    ensure_file,
    ensure_packages,
    ensure_service,
    install_host_script,
    put_template,
    put_text,
    settings,
)
from rave.observability import enabled_names
from rave.render import FILES
from rave.sandbox import DEFAULT_SYSCALL_FILTER, Sandbox, dropin_text
from rave.secrets.deploy import secrets_changed
from rave.settings import HostSettings
from tasks.observability import textfile_directory

SCRIPT = "/usr/local/sbin/rave-backup"
CONFIG = "/etc/rave/backup.json"
STATE_DIR = "/var/lib/rave-backup"
DUMP_DIR = f"{STATE_DIR}/dump"
# pgBackRest: PostgreSQL's archive_command pushes each WAL segment into its repository; the
# wrapper puts the cipher pass (a secret on tmpfs) into pgBackRest's environment
PGBACKREST = "/usr/local/sbin/rave-pgbackrest"
PGBACKREST_CONF = "/etc/pgbackrest/pgbackrest.conf"
PGBACKREST_LOG = "/var/log/pgbackrest"
STANZA = "rave"
# "<system identifier> <repository path>" of the cluster the stanza was created and checked for
STANZA_MARKER = f"{STATE_DIR}/pgbackrest-stanza"
CIPHER_SECRET = "backup_pgbackrest_cipher_password"
S3_KEY_SECRET = "backup_pgbackrest_s3_key"
S3_SECRET_KEY_SECRET = "backup_pgbackrest_s3_key_secret"
# the hand-written WAL spool this replaced (removed from hosts that had it)
OLD_ARCHIVE_SCRIPT = "/usr/local/sbin/rave-wal-archive"
CACHE_DIR = "/var/cache/rave-backup"
# sha256 of the password that last opened the repository (written by `rave-backup init/rekey`)
PASSWORD_MARKER = f"{STATE_DIR}/repository-password.sha256"
UNIT = component("backup").unit
MAINTENANCE_UNIT = f"{UNIT}-maintenance"
WAL_STATUS_UNIT = f"{UNIT}-wal-status"
SECRETS_UNIT = "rave-secrets"
SECRET = "backup_repository_password"
PREVIOUS_SECRET = "backup_repository_previous_password"
# always backed up besides the components' paths: the project's /etc/rave (the encrypted
# secrets file) and the SSH host keys (the host's identity and secrets recipient)
ALWAYS = ("/etc/rave", "/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_ed25519_key.pub")
DATABASE_SECRETS = ("postgres_webhook_password", "postgres_exporter_password")


def password_file() -> str:
    return secret_file(SECRET)


def secret_file(name: str) -> str:
    try:
        from rave.secrets.deploy import secret_path
    except ImportError:  # the secrets package follows the same contract
        return f"/run/rave/secrets/backup/{name}"
    return str(secret_path("backup", name))


def minimal_paths(paths: list[str] | tuple[str, ...]) -> list[str]:
    """Sorted, without duplicates and without paths inside another listed path."""
    result: list[str] = []
    for path in sorted(set(paths)):
        if not any(path == kept or path.startswith(kept.rstrip("/") + "/") for kept in result):
            result.append(path)
    return result


def is_local(repository: str) -> bool:
    return repository.startswith("/")


def runs_database(s: HostSettings) -> bool:
    """Whether PostgreSQL runs here: not on a monitoring host (rave/topology.py), whose backup
    holds its files only (no dumps, no WAL archiving, PostgreSQL never touched)."""
    return component("postgresql").name in enabled_names(s)


def databases(s: HostSettings) -> bool:
    return s.backup_databases and runs_database(s)


def host_paths(s: HostSettings) -> list[str]:
    """Every component's backup paths; on a monitoring host only those of what it runs."""
    return backup_paths(enabled_names(s) if s.monitoring_role else None)


def db_client_units() -> list[str]:
    """Services stopped while a database is restored: every reader of a database secret."""
    postgres = component("postgresql").name
    readers = {c.unit for s in DATABASE_SECRETS for c in secret_readers(s) if c.name != postgres}
    return sorted(f"{unit}.service" for unit in readers)


def restart_units() -> list[str]:
    """Units try-restarted after a whole-host restore (ssh and the secrets unit come first)."""
    skip = {"sshd", "postgresql", "backup"}
    return [c.unit for c in COMPONENTS if c.name not in skip]


def pg_conf_dir(s: HostSettings) -> str:
    return f"/etc/postgresql/{s.postgres_version}/main"


def wal_archive_conf(s: HostSettings) -> str:
    return f"{pg_conf_dir(s)}/conf.d/rave-wal-archive.conf"


def host_config(s: HostSettings) -> dict[str, Any]:
    """/etc/rave/backup.json: everything the host script needs, nothing secret."""
    return {
        "repository": s.backup_repository,
        "password_file": password_file(),
        # kept by `rave-secrets rotate` until the repository was moved to the new password
        "previous_password_file": secret_file(PREVIOUS_SECRET),
        "password_marker": PASSWORD_MARKER,
        # a remote repository's credentials: files the script reads, never values in here
        "repository_env_file": secret_file("backup_repository_env"),
        "sftp_key_file": secret_file("backup_sftp_private_key"),
        "sftp_known_hosts_file": secret_file("backup_sftp_known_hosts"),
        "cache_dir": CACHE_DIR,
        "state_dir": STATE_DIR,
        "dump_dir": DUMP_DIR,
        "paths": minimal_paths([*host_paths(s), *ALWAYS, *s.backup_include_extra]),
        "exclude": list(s.backup_exclude),
        "textfile_dir": s.backup_textfile_dir,
        "hostname": s.hostname,
        "databases": databases(s),
        "database_exclude": list(s.backup_database_exclude),
        "pg_user": "postgres",
        "pg_home": "/var/lib/postgresql",
        "pg_host": "/var/run/postgresql",
        "pg_port": 5432,
        "pg_unit": component("postgresql").unit,
        "pg_data": f"/var/lib/postgresql/{s.postgres_version}/main",
        "pg_conf_dir": pg_conf_dir(s),
        "wal_archiving": wal_archiving(s),
        "archive_timeout": s.backup_wal_archive_timeout_sec,
        "pgbackrest": {
            "command": PGBACKREST,
            "stanza": STANZA,
            "repo_type": s.backup_pgbackrest_repo_type,
            "repo_path": s.backup_pgbackrest_repo_path,
            "repo_id": repository_identity(s),
            "full_interval_days": s.backup_pgbackrest_full_interval_days,
            "stanza_marker": STANZA_MARKER,
            "controldata": f"/usr/lib/postgresql/{s.postgres_version}/bin/pg_controldata",
        },
        "db_client_units": db_client_units(),
        "restart_units": restart_units(),
        "unit": UNIT,
        "secrets_unit": SECRETS_UNIT,
        "keep": {
            "hourly": s.backup_keep_hourly,
            "daily": s.backup_keep_daily,
            "weekly": s.backup_keep_weekly,
            "monthly": s.backup_keep_monthly,
        },
    }


def config_text(s: HostSettings) -> str:
    return json.dumps(host_config(s), indent=1, sort_keys=True) + "\n"


def sandbox(s: HostSettings) -> Sandbox:
    """Root (it reads every backed-up file and switches to postgres for the dumps), but with a
    read-only system: it writes only its state, cache, metrics and a local repository."""
    writable = [STATE_DIR, CACHE_DIR, f"-{s.backup_textfile_dir}"]
    if wal_archiving(s):  # pgBackRest (as postgres) writes its repository and its log
        writable += [f"-{PGBACKREST_LOG}"]
        if s.backup_pgbackrest_repo_type == "posix":
            writable.append(s.backup_pgbackrest_repo_path)
    extra = [("SystemCallErrorNumber", "EPERM")]
    if is_local(s.backup_repository) and s.backup_pgbackrest_repo_type == "posix":
        writable.append(s.backup_repository)
        # no network at all: PostgreSQL is reached over its unix socket
        extra += [("PrivateNetwork", "yes"), ("IPAddressDeny", "any")]
    elif is_local(s.backup_repository):
        writable.append(s.backup_repository)
    # @privileged holds setuid/setgroups/chown (the postgres switch), @resources Go's setrlimit
    deny = "~@mount @debug @cpu-emulation @obsolete @raw-io @reboot @swap @clock @module"
    return Sandbox(
        read_write_paths=tuple(writable),
        capabilities=(
            "CAP_DAC_READ_SEARCH",
            "CAP_DAC_OVERRIDE",
            "CAP_FOWNER",
            "CAP_CHOWN",
            "CAP_SETUID",
            "CAP_SETGID",
        ),
        syscall_filter=(DEFAULT_SYSCALL_FILTER[0], deny),
        protect_home="read-only",  # ssh (sftp repository) looks at ~/.ssh; the key is a secret
        extra=tuple(extra),
    )


def sandbox_dropin(s: HostSettings) -> str:
    limits = s.profile.limits_for(component("backup").name)
    return dropin_text(sandbox(s), limits, "backup sandbox (tasks/backup.py)")


def unit_templates(s: HostSettings) -> dict[str, tuple[str, dict[str, Any]]]:
    """{template: (destination, context)} of the units, services first then their timers."""
    service = {
        "script": SCRIPT,
        "config": CONFIG,
        "secrets_unit": SECRETS_UNIT,
        "postgres_unit": component("postgresql").unit if runs_database(s) else "",
    }
    units = "/etc/systemd/system"
    wal_status = {
        "backup/rave-backup-wal-status.service.j2": (
            f"{units}/{WAL_STATUS_UNIT}.service",
            service,
        ),
        "backup/rave-backup-wal-status.timer.j2": (
            f"{units}/{WAL_STATUS_UNIT}.timer",
            {"unit": WAL_STATUS_UNIT},
        ),
    }
    return {
        "backup/rave-backup.service.j2": (f"{units}/{UNIT}.service", service),
        "backup/rave-backup.timer.j2": (
            f"{units}/{UNIT}.timer",
            {"unit": UNIT, "schedule": s.backup_schedule, "delay": s.backup_randomized_delay_sec},
        ),
        "backup/rave-backup-maintenance.service.j2": (
            f"{units}/{MAINTENANCE_UNIT}.service",
            service,
        ),
        "backup/rave-backup-maintenance.timer.j2": (
            f"{units}/{MAINTENANCE_UNIT}.timer",
            {
                "unit": MAINTENANCE_UNIT,
                "schedule": s.backup_maintenance_schedule,
                "delay": s.backup_maintenance_randomized_delay_sec,
            },
        ),
        **(wal_status if wal_archiving(s) else {}),
    }


def wal_archiving(s: HostSettings) -> bool:
    return s.backup_wal_archiving and databases(s)


def wal_archive_context(s: HostSettings) -> dict[str, Any]:
    return {
        "pgbackrest": PGBACKREST,
        "archive_timeout": s.backup_wal_archive_timeout_sec,
    }


def pgbackrest_conf(s: HostSettings) -> str:
    """pgBackRest's configuration: nothing secret (the cipher pass comes from the wrapper)."""
    return "\n".join(
        [
            "# Managed by RAVE deploy (tasks/backup.py); the cipher pass is not here: see "
            + PGBACKREST,
            "[global]",
            f"repo1-type={s.backup_pgbackrest_repo_type}",
            f"repo1-path={s.backup_pgbackrest_repo_path}",
            *s3_options(s),
            "repo1-cipher-type=aes-256-cbc",
            "repo1-retention-full-type=count",
            f"repo1-retention-full={s.backup_pgbackrest_retention_full}",
            f"repo1-retention-diff={s.backup_pgbackrest_retention_diff}",
            "compress-type=zst",
            "start-fast=y",
            "log-level-console=warn",
            "log-level-file=info",
            f"log-path={PGBACKREST_LOG}",
            "",
            f"[{STANZA}]",
            f"pg1-path=/var/lib/postgresql/{s.postgres_version}/main",
            "pg1-port=5432",
            "pg1-socket-path=/var/run/postgresql",
            "",
        ]
    )


def s3_options(s: HostSettings) -> list[str]:
    """repo1-s3-* of an s3 repository (the key pair is not here: see pgbackrest_wrapper)."""
    if s.backup_pgbackrest_repo_type != "s3":
        return []
    return [
        f"repo1-s3-endpoint={s.backup_pgbackrest_s3_endpoint}",
        f"repo1-s3-bucket={s.backup_pgbackrest_s3_bucket}",
        f"repo1-s3-region={s.backup_pgbackrest_s3_region}",
        f"repo1-s3-uri-style={s.backup_pgbackrest_s3_uri_style}",
    ]


def repository_identity(s: HostSettings) -> str:
    """What the stanza marker records: another bucket or path is another repository."""
    if s.backup_pgbackrest_repo_type == "s3":
        return (
            f"s3://{s.backup_pgbackrest_s3_bucket}@{s.backup_pgbackrest_s3_endpoint}"
            f"{s.backup_pgbackrest_repo_path}"
        )
    return s.backup_pgbackrest_repo_path


# secret -> pgBackRest's environment variable (the option it sets, from the secrets on tmpfs)
WRAPPER_SECRETS = {"posix": {CIPHER_SECRET: "PGBACKREST_REPO1_CIPHER_PASS"}}
WRAPPER_SECRETS["s3"] = {
    **WRAPPER_SECRETS["posix"],
    S3_KEY_SECRET: "PGBACKREST_REPO1_S3_KEY",
    S3_SECRET_KEY_SECRET: "PGBACKREST_REPO1_S3_KEY_SECRET",
}


def pgbackrest_wrapper(repo_type: str = "posix") -> str:
    """pgBackRest with the cipher pass (and an s3 repository's key pair) in its environment,
    read from the secrets (tmpfs) on every call: never on a command line (ps), never in a file
    on disk."""
    lines = [
        "#!/bin/sh",
        f"# Managed by RAVE deploy (tasks/backup.py): pgBackRest (stanza {STANZA}) with the "
        "repository's secrets from /run in its environment",
        "set -eu",
    ]
    for secret, variable in WRAPPER_SECRETS[repo_type].items():
        lines += [
            f'{variable}="$(cat {secret_file_of("postgresql", secret)})"',
            f'if [ -z "${variable}" ]; then',
            f'    echo "rave-pgbackrest: {secret} is empty (rave-secrets set ...)" >&2',
            "    exit 1",
            "fi",
            f"export {variable}",
        ]
    lines.append(f'exec /usr/bin/pgbackrest --stanza={STANZA} "$@"')
    return "\n".join(lines) + "\n"


def secret_file_of(component_name: str, name: str) -> str:
    try:
        from rave.secrets.deploy import secret_path
    except ImportError:  # the secrets package follows the same contract
        return f"/run/rave/secrets/{component_name}/{name}"
    return str(secret_path(component_name, name))


def templates(s: HostSettings) -> dict[str, dict[str, Any]]:
    """For tests/unit/test_templates.py: every template of this task with its context."""
    result = {template: context for template, (_dest, context) in unit_templates(s).items()}
    result["backup/wal-archive.conf.j2"] = wal_archive_context(s)
    return result


class BackupRepositoryStatus(FactBase):
    """initialized | missing | no-password | no-restic | rekey (never prints the password).

    initialized: the repository is there and its password file hashes to the marker that
    `rave-backup init`/`rekey` wrote when that password opened it; rekey: the password changed
    since (a rotation) or was never checked. No restic key derivation on a no-change run.
    """

    def command(self, repository: str, password_file: str, marker: str = PASSWORD_MARKER) -> str:
        repo, pw, mark = (shlex.quote(v) for v in (repository, password_file, marker))
        checked = f'[ "$(sha256sum < {pw} | cut -d\' \' -f1)" = "$(cat {mark} 2>/dev/null)" ]'
        if not is_local(repository):
            # a remote repository: the marker says the password opened it; else the installed
            # script looks (it sets up the credentials) and `init` creates or rekeys
            return (
                f"if [ -r {pw} ] && {checked}; then echo initialized; "
                f"elif [ -x {SCRIPT} ] && [ -r {CONFIG} ]; then "
                f"{SCRIPT} --config {CONFIG} status 2>/dev/null | tail -n 1 "
                "| sed 's/^initialized$/rekey/'; else echo missing; fi"
            )
        # a local repository exists when restic's config and keys do; opening it with the
        # password (a scrypt key derivation, ~0.5 s of CPU) happens only when the password file
        # no longer matches the marker
        return (
            "if ! command -v restic >/dev/null 2>&1; then echo no-restic; "
            f"elif ! [ -r {pw} ]; then echo no-password; "
            f"elif ! [ -f {repo}/config ] || ! [ -d {repo}/keys ]; then echo missing; "
            f"elif {checked}; then echo initialized; "
            "else echo rekey; fi"
        )

    def process(self, output: list[str]) -> str:
        return output[0].strip() if output else "missing"


def run_and_print(command: str) -> None:
    """For ops/: run a rave-backup subcommand on the host, print its output, fail if it failed."""
    ok, output = host.run_shell_command(command, _sudo=True)
    print(f"--- {host.name}: {command}")
    for line in output.output_lines:
        print(f"    {line}")
    if not ok:
        raise RuntimeError(f"{host.name}: `{command}` failed (output above)")


def op_command(subcommand: str, *args: str) -> str:
    s = settings()
    parts = [SCRIPT]
    if s.backup_password_file:
        parts += ["--password-file", s.backup_password_file]
    return shlex.join([*parts, subcommand, *args])


def run_op(name: str, subcommand: str, *args: str) -> None:
    python.call(name=name, function=run_and_print, command=op_command(subcommand, *args))


class PgBackRestStanza(FactBase):
    """ok: the stanza was created and checked (`rave-backup stanza`) for this cluster and this
    repository path; missing otherwise (a new host, a restored or re-initialised cluster)."""

    def command(self, marker: str, controldata: str, data_dir: str, repo_path: str) -> str:
        m, c, d, r = (shlex.quote(v) for v in (marker, controldata, data_dir, repo_path))
        return (
            f"id=$({c} {d} 2>/dev/null | sed -n 's/^Database system identifier: *//p'); "
            f'if [ -n "$id" ] && [ "$id "{r} = "$(cat {m} 2>/dev/null)" ]; '
            "then echo ok; else echo missing; fi"
        )

    def process(self, output: list[str]) -> str:
        return output[0].strip() if output else "missing"


def wal_archive(s: HostSettings) -> None:
    """archive_command `pgbackrest archive-push` and the stanza; PostgreSQL restarts only when
    the archiving configuration changed."""
    if not runs_database(s):
        return
    ensure_file(
        name="No hand-written WAL archive script (pgBackRest pushes the WAL)",
        path=OLD_ARCHIVE_SCRIPT,
        present=False,
    )
    if wal_archiving(s):
        if s.backup_pgbackrest_repo_type == "posix":
            ensure_directory(
                name="pgBackRest repository directory (pgBackRest runs as postgres)",
                path=s.backup_pgbackrest_repo_path,
                user="postgres",
                group="postgres",
                mode="750",
            )
        ensure_directory(
            name="pgBackRest log directory",
            path=PGBACKREST_LOG,
            user="postgres",
            group="postgres",
            mode="770",
        )
        ensure_directory(
            name="pgBackRest configuration directory",
            path="/etc/pgbackrest",
            user="root",
            group="root",
            mode="755",
        )
        put_text(
            "pgBackRest configuration (nothing secret)",
            PGBACKREST_CONF,
            pgbackrest_conf(s),
            user="root",
            group="postgres",
            mode="640",
        )
        put_text(
            "Install rave-pgbackrest (pgBackRest with its cipher pass)",
            PGBACKREST,
            pgbackrest_wrapper(s.backup_pgbackrest_repo_type),
            mode="755",
        )
        conf = put_template(
            "PostgreSQL WAL archiving (archive_mode, archive_command, archive_timeout)",
            "backup/wal-archive.conf.j2",
            wal_archive_conf(s),
            user="root",  # a root-owned directory (tasks/database.py)
            group="postgres",
            **wal_archive_context(s),
        )
    else:
        conf = ensure_file(
            name="No PostgreSQL WAL archiving (backup_wal_archiving is off)",
            path=wal_archive_conf(s),
            present=False,
        )
    ensure_service(
        name="Restart PostgreSQL (WAL archiving changed)",
        service=component("postgresql").unit,
        running=True,
        restarted=True,
        _if=conf.did_change,
    )
    if wal_archiving(s):
        stanza = host.get_fact(
            PgBackRestStanza,
            marker=STANZA_MARKER,
            controldata=f"/usr/lib/postgresql/{s.postgres_version}/bin/pg_controldata",
            data_dir=f"/var/lib/postgresql/{s.postgres_version}/main",
            repo_path=repository_identity(s),
            _sudo=True,
        )
        if stanza != "ok":
            server.shell(
                name="Create and check the pgBackRest stanza (stanza-create, check)",
                commands=[f"{SCRIPT} --config {CONFIG} stanza"],
            )


@deploy("Backup")
def backup() -> None:
    s = settings()
    if not s.backup_enabled:
        return
    ensure_packages("Install restic and the dump tools", component("backup").packages)
    ensure_directory(
        name="Backup state directory", path=STATE_DIR, user="root", group="root", mode="711"
    )
    ensure_directory(
        name="restic cache directory", path=CACHE_DIR, user="root", group="root", mode="700"
    )
    if is_local(s.backup_repository):
        ensure_directory(
            name="Local restic repository directory",
            path=s.backup_repository,
            user="root",
            group="root",
            mode="700",
        )
    if s.backup_textfile_dir == obs.TEXTFILE_DIR:  # as the observability task keeps it
        textfile_directory("Node exporter textfile directory (backup metrics)")
    else:
        ensure_directory(
            name="Textfile directory of the backup metrics",
            path=s.backup_textfile_dir,
            user="root",
            group="root",
            mode="755",
        )
    install_host_script("Install rave-backup", str(FILES / "backup" / "rave_backup.py"), SCRIPT)
    put_text("Backup configuration", CONFIG, config_text(s), mode="600")

    units = [
        put_template(f"Backup unit {dest.rsplit('/', 1)[1]}", template, dest, **context)
        for template, (dest, context) in unit_templates(s).items()
    ]
    timers = {dest: op for (dest, _ctx), op in zip(unit_templates(s).values(), units, strict=True)}
    services = [UNIT, MAINTENANCE_UNIT] + ([WAL_STATUS_UNIT] if wal_archiving(s) else [])
    for unit in services:
        units.append(
            put_text(
                f"Sandbox of {unit}",
                f"/etc/systemd/system/{unit}.service.d/50-sandbox.conf",
                sandbox_dropin(s),
            )
        )
    schedules = shlex.join(["systemd-analyze", "calendar", "--", s.backup_schedule])
    schedules += " >/dev/null && "
    schedules += shlex.join(["systemd-analyze", "calendar", "--", s.backup_maintenance_schedule])
    server.shell(
        name="Validate the backup schedules (OnCalendar)",
        commands=[schedules + " >/dev/null"],
        _if=any_changed(*units),
    )
    systemd.daemon_reload(name="Reload systemd (backup units)", _if=any_changed(*units))
    for unit in services:
        timer = timers[f"/etc/systemd/system/{unit}.timer"]
        ensure_service(
            name=f"Enable and start {unit}.timer",
            service=f"{unit}.timer",
            running=True,
            enabled=True,
        )
        ensure_service(
            name=f"Restart {unit}.timer (schedule changed)",
            service=f"{unit}.timer",
            running=True,
            restarted=True,
            _if=timer.did_change,
        )
    wal_archive(s)
    status = host.get_fact(
        BackupRepositoryStatus,
        repository=s.backup_repository,
        password_file=password_file(),
        _sudo=True,
    )
    # the facts were read before the secrets task put a rotated password in place: a changed
    # backup secret (its manifest uploaded in this run) brings the repository along too
    server.shell(
        name="Initialise the restic repository, or move its key to a rotated password",
        commands=[f"{SCRIPT} --config {CONFIG} init"],
        _if=(lambda: True)
        if status != "initialized"
        else secrets_changed(component("backup").name),
    )
