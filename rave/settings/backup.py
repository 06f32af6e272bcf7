"""Settings of the backup concern (restic repository, retention, schedule, what is backed up).

The `backup_snapshot`, `backup_restore_*` and `backup_verify_*` fields are parameters of the
operator operations (ops/backup_*.py), given with `--data key=value`; declaring them here keeps
them validated like every other setting (a typo is refused before pyinfra connects).
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from typing import Literal

from pydantic import Field, field_validator, model_validator

from rave.settings.base import Concern

# restic backends we accept: a local absolute path (staging), or a remote one (production)
REPOSITORY_PATTERN = r"^(/[^\s]*|(sftp|s3|rest|b2|azure|gs|swift|rclone):[^\s]+)$"
# systemd OnCalendar: a shorthand or a calendar expression (checked again by systemd-analyze)
CALENDAR_PATTERN = r"^[A-Za-z0-9*:,./~ -]+$"
SNAPSHOT_PATTERN = r"^(latest|[0-9a-f]{8,64})$"
# pgBackRest's repo1-s3-endpoint: a host name (or address), an optional port, nothing else
S3_ENDPOINT_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?$"
# what a remote repository needs from the secrets (backup_repository_env keys, or a secret)
REQUIRED_CREDENTIALS: dict[str, tuple[str, ...]] = {
    "s3": (
        "backup_repository_env.AWS_ACCESS_KEY_ID",
        "backup_repository_env.AWS_SECRET_ACCESS_KEY",
    ),
    "b2": ("backup_repository_env.B2_ACCOUNT_ID", "backup_repository_env.B2_ACCOUNT_KEY"),
    "azure": ("backup_repository_env.AZURE_ACCOUNT_NAME",),
    "sftp": ("backup_sftp_private_key", "backup_sftp_known_hosts"),
}


# an sftp repository: sftp:[user@]host:/path or sftp://[user@]host[:port]/path. The user and
# host reach ssh's command line (files/backup/rave_backup.py), so only a host name or an IPv4
# address and a plain user name are accepted: never "-oProxyCommand=..." or shell characters.
SFTP_USER = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,31}"
SFTP_HOST = r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?"
SFTP_SHORT = re.compile(r"^sftp:(?:(?P<user>[^@/:]*)@)?(?P<host>[^:/]*):(?P<path>.+)$")
SFTP_URL = re.compile(
    r"^sftp://(?:(?P<user>[^@/:]*)@)?(?P<host>[^:/]*)(?::(?P<port>[^/]*))?/(?P<path>.*)$"
)
HOST_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def check_sftp_repository(repository: str) -> None:
    """ValueError unless the sftp repository names a plain user (if any), a host name or IPv4
    address, and (URL form) a port 1-65535."""
    url = repository.startswith("sftp://")
    match = (SFTP_URL if url else SFTP_SHORT).match(repository)
    if not match:
        raise ValueError(
            f"not sftp:[user@]host:/path or sftp://[user@]host[:port]/path: {repository!r}"
        )
    user, host = match.group("user"), match.group("host")
    if user is not None and not re.fullmatch(SFTP_USER, user):
        raise ValueError(
            f"sftp user {user!r} is not a plain user name (letters, digits, '.', '_', '-'; "
            "not starting with '-')"
        )
    if not valid_host(host):
        raise ValueError(
            f"sftp host {host!r} is not a host name or IPv4 address (letters, digits, '.', '-'; "
            "not starting with '-')"
        )
    port = match.groupdict().get("port")
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"sftp port {port!r} is not a number from 1 to 65535")


def valid_host(host: str) -> bool:
    """A DNS host name (labels of letters, digits and inner '-') or a dotted IPv4 address."""
    if not re.fullmatch(SFTP_HOST, host):
        return False
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return True
    return all(HOST_LABEL.match(label) for label in host.split("."))


def repository_backend(repository: str) -> str:
    """local, or restic's backend prefix (s3, sftp, ...)."""
    return "local" if repository.startswith("/") else repository.split(":", 1)[0]


def missing_credentials(repository: str, present: dict[str, object]) -> list[str]:
    """The credentials (secret, or secret.KEY) the repository needs and the secrets lack;
    present is the environment's public <env>.present (rave/secrets/store.py)."""
    missing = []
    for needed in REQUIRED_CREDENTIALS.get(repository_backend(repository), ()):
        secret, _, key = needed.partition(".")
        value = present.get(secret)
        if not value or (key and (not isinstance(value, list) or key not in value)):
            missing.append(needed)
    return missing


class BackupSettings(Concern):
    backup_enabled: bool = Field(True, description="install restic, the backup timer and units")
    backup_repository: str = Field(
        "/var/backups/rave/restic",
        pattern=REPOSITORY_PATTERN,
        description="restic repository: an absolute local path (staging) or "
        "sftp:user@host:/path, s3:https://endpoint/bucket/path, rest:... (production)",
    )
    backup_local_repository_acknowledged: bool = Field(
        False,
        description="a production host (rave_environment other than staging) may keep its "
        "repository on its own disk only with this set, in the same file as backup_repository; "
        "the BackupRepositoryOnHost alert then stands",
    )
    backup_keep_hourly: int = Field(24, ge=0, le=1000, description="hourly snapshots kept")
    backup_keep_daily: int = Field(7, ge=0, le=1000, description="daily snapshots kept")
    backup_keep_weekly: int = Field(4, ge=0, le=1000, description="weekly snapshots kept")
    backup_keep_monthly: int = Field(6, ge=0, le=1000, description="monthly snapshots kept")
    backup_schedule: str = Field(
        "hourly", pattern=CALENDAR_PATTERN, description="OnCalendar of rave-backup.timer"
    )
    backup_randomized_delay_sec: int = Field(
        600, ge=0, le=86400, description="RandomizedDelaySec of the backup timer"
    )
    backup_maintenance_schedule: str = Field(
        "*-*-* 03:30:00",
        pattern=CALENDAR_PATTERN,
        description="OnCalendar of rave-backup-maintenance.timer (forget --prune, then check)",
    )
    backup_maintenance_randomized_delay_sec: int = Field(
        1800, ge=0, le=86400, description="RandomizedDelaySec of the maintenance timer"
    )
    backup_include_extra: list[str] = Field(
        default_factory=list,
        description="absolute paths backed up besides the components' own backup paths",
    )
    backup_exclude: list[str] = Field(
        default_factory=lambda: ["/var/lib/prometheus"],
        description="restic --exclude patterns (Prometheus data is excluded by default)",
    )
    backup_databases: bool = Field(
        True, description="dump every project database (fails loudly if PostgreSQL is down)"
    )
    backup_database_exclude: list[str] = Field(
        default_factory=lambda: ["postgres"], description="databases never dumped"
    )
    backup_textfile_dir: str = Field(
        "/var/lib/prometheus/node-exporter",
        pattern=r"^/[^\s]+$",
        description="node exporter textfile collector directory for the backup metrics",
    )
    backup_wal_archiving: bool = Field(
        True,
        description="PostgreSQL backups by pgBackRest: archive_command `pgbackrest archive-push` "
        "(each WAL segment into the pgBackRest repository as PostgreSQL completes it), full and "
        "differential backups with every backup run, point-in-time restore",
    )
    backup_wal_archive_timeout_sec: int = Field(
        60,
        ge=30,
        le=3600,
        description="PostgreSQL archive_timeout: a WAL segment is pushed at least this often "
        "while anything is written; the recovery point after a lost host (repository off it)",
    )
    backup_pgbackrest_repo_type: Literal["posix", "s3"] = Field(
        "posix",
        description="pgBackRest repository type (repo1-type); posix: a path, local or a mount; "
        "s3: an S3-compatible bucket (backup_pgbackrest_s3_*; the key pair from the secrets "
        "backup_pgbackrest_s3_key and backup_pgbackrest_s3_key_secret)",
    )
    backup_pgbackrest_s3_endpoint: str | None = Field(
        None,
        pattern=S3_ENDPOINT_PATTERN,
        description="s3: the endpoint host (repo1-s3-endpoint), e.g. s3.eu-central-1.amazonaws.com",
    )
    backup_pgbackrest_s3_bucket: str | None = Field(
        None,
        pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
        description="s3: the bucket (repo1-s3-bucket)",
    )
    backup_pgbackrest_s3_region: str | None = Field(
        None,
        pattern=r"^[a-z0-9-]{1,64}$",
        description="s3: the region (repo1-s3-region), e.g. eu-central-1",
    )
    backup_pgbackrest_s3_uri_style: Literal["host", "path"] = Field(
        "host",
        description="s3: bucket in the host name (host) or in the path (path: most "
        "self-hosted S3-compatible stores) (repo1-s3-uri-style)",
    )
    backup_pgbackrest_repo_path: str = Field(
        "/var/backups/rave/pgbackrest",
        pattern=r"^/[^\s]+$",
        description="pgBackRest repository path (repo1-path); on the host's own disk it needs "
        "backup_local_repository_acknowledged outside staging, like a local restic repository",
    )
    backup_pgbackrest_full_interval_days: int = Field(
        7,
        ge=1,
        le=90,
        description="a backup run takes a full pgBackRest backup when the newest full one is "
        "older than this, a differential one otherwise",
    )
    backup_pgbackrest_retention_full: int = Field(
        2, ge=1, le=100, description="full pgBackRest backups kept (repo1-retention-full)"
    )
    backup_pgbackrest_retention_diff: int = Field(
        24,
        ge=1,
        le=1000,
        description="differential pgBackRest backups kept (repo1-retention-diff)",
    )
    # --- parameters of the operator operations (ops/backup_*.py), given with --data
    backup_snapshot: str = Field(
        "latest",
        pattern=SNAPSHOT_PATTERN,
        description="ops: the snapshot to verify or restore (an id from ops/backup_list.py)",
    )
    backup_restore_scope: Literal["database", "host"] = Field(
        "database",
        description="ops/backup_restore.py: the databases alone, or the whole host "
        "(files, secrets file, SSH host keys, roles and databases)",
    )
    backup_restore_target_time: str | None = Field(
        None,
        description="ops/backup_restore.py: restore to this point in time (ISO 8601 with a time "
        "zone, e.g. 2026-12-06T15:04:05+00:00): pgBackRest restores the whole PostgreSQL cluster "
        "to it (a backup plus the archived WAL replayed up to that time)",
    )
    backup_restore_confirm: bool = Field(
        False, description="ops/backup_restore.py: really restore (false: print the plan only)"
    )
    backup_verify_strict_live: bool = Field(
        False,
        description="ops/backup_verify.py: also fail when the live database differs from the "
        "snapshot (for quiet hosts and tests)",
    )
    backup_password_file: str | None = Field(
        None,
        pattern=r"^/[^\s]+$",
        description="ops: read the repository password from this host file instead of the "
        "secret (for drills and the wrong-password test)",
    )

    @model_validator(mode="after")
    def _s3_repository_is_complete(self) -> BackupSettings:
        if self.backup_pgbackrest_repo_type == "s3":
            missing = [
                f"backup_pgbackrest_s3_{name}"
                for name in ("endpoint", "bucket", "region")
                if getattr(self, f"backup_pgbackrest_s3_{name}") is None
            ]
            if missing:
                raise ValueError(
                    f"backup_pgbackrest_repo_type 's3' needs {', '.join(missing)} (docs/backup.md)"
                )
        return self

    @field_validator("backup_repository")
    @classmethod
    def _sftp_host(cls, value: str) -> str:
        if value.startswith("sftp:"):
            check_sftp_repository(value)
        return value

    @field_validator("backup_restore_target_time")
    @classmethod
    def _target_time(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                f"not an ISO 8601 time: {value!r} (e.g. 2026-12-06T15:04:05+00:00)"
            ) from None
        if parsed.tzinfo is None:
            raise ValueError(f"{value!r} has no time zone: add one, e.g. +00:00 or Z")
        return parsed.isoformat()

    @field_validator("backup_include_extra")
    @classmethod
    def _absolute(cls, paths: list[str]) -> list[str]:
        for path in paths:
            if not path.startswith("/") or re.search(r"\s", path):
                raise ValueError(f"not an absolute path without spaces: {path!r}")
        return paths
