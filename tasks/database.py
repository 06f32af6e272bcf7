"""PostgreSQL (Debian's): localhost only, scram-sha-256, one role per service, sized by the mode.

The webhook database is created here; its schema is migrated by tasks/webhook.py (the
migrations ship with the receiver's code). Role passwords come from the secrets on the host
and are set by a host-side script that reads the secret file (never a command line).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

from pyinfra import host
from pyinfra.api import FactBase, deploy
from pyinfra.operations import server
from pyinfra.operations.util import any_changed

from rave.components import component
from rave.deploykit import (
    ensure_directory,
    ensure_packages,
    ensure_service,
    install_host_script,
    put_template,
    put_text,
    settings,
)
from rave.sandbox import Sandbox, dropin_text, limits_dropin_text
from rave.secrets.deploy import secret_path, secrets_changed
from rave.settings import HostSettings
from tasks.backup import PGBACKREST_LOG, wal_archiving


def postgres_sandbox(s: HostSettings) -> Sandbox:
    """SANDBOX plus what archive-push writes (its lock is in the unit's private /tmp)."""
    extra = [f"-{PGBACKREST_LOG}"]
    update: dict[str, object] = {}
    if s.backup_pgbackrest_repo_type == "posix":
        extra.append(f"-{s.backup_pgbackrest_repo_path}")
    elif wal_archiving(s):
        # archive-push reaches an s3 endpoint, a name systemd's IPAddressAllow cannot hold:
        # PostgreSQL itself still listens on localhost only (and the firewall filters)
        update["extra"] = tuple(
            ("IPAddressAllow", "any") if key == "IPAddressAllow" else (key, value)
            for key, value in SANDBOX.extra
        )
    update["read_write_paths"] = (*SANDBOX.read_write_paths, *extra)
    return SANDBOX.model_copy(update=update)


DATABASE = "rave_webhook"
WRITER_ROLE = "rave_webhook"  # the receiver: INSERT on webhook_events (granted by migrations)
EXPORTER_ROLE = "rave_exporter"  # prometheus-postgres-exporter: pg_monitor, database postgres
PASSWORD_SCRIPT = "/usr/local/sbin/rave-pg-password"
RUN_AS_POSTGRES = "cd / && runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1"

# pg_ctlcluster runs as the cluster's owner (root only switches to it): no capabilities,
# localhost only, writes only the cluster, its socket and its log; with WAL archiving also what
# archive_command (pgbackrest archive-push) writes: its log and a posix repository (sandbox()).
# W^X stays allowed: the LLVM JIT (jit=on) maps code it wrote.
SANDBOX = Sandbox(
    read_write_paths=(
        "/var/lib/postgresql",
        "/run/postgresql",
        "/var/log/postgresql",
    ),
    memory_deny_write_execute=False,
    extra=(
        ("User", "postgres"),
        ("Group", "postgres"),
        ("IPAddressAllow", "localhost"),
        ("IPAddressDeny", "any"),
        ("PrivateMounts", "yes"),
        ("SystemCallErrorNumber", "EPERM"),
    ),
)

# role → (secret, database it may connect to, extra membership)
ROLES: dict[str, tuple[str, str, str | None]] = {
    WRITER_ROLE: ("postgres_webhook_password", DATABASE, None),
    EXPORTER_ROLE: ("postgres_exporter_password", "postgres", "pg_monitor"),
}


class PostgresRoles(FactBase):
    """Login roles and their memberships ({} before PostgreSQL is installed or running)."""

    @staticmethod
    def default() -> dict[str, dict[str, Any]]:
        return {}

    def command(self) -> str:
        query = (
            "SELECT r.rolname || ':' || r.rolcanlogin::text || ':' || "
            "coalesce(string_agg(m.rolname, ',' ORDER BY m.rolname), '') FROM pg_roles r "
            "LEFT JOIN pg_auth_members a ON a.member = r.oid "
            "LEFT JOIN pg_roles m ON m.oid = a.roleid "
            "WHERE r.rolname NOT LIKE 'pg\\_%' GROUP BY r.rolname, r.rolcanlogin"
        )
        return f'{RUN_AS_POSTGRES} -d postgres -c "{query}" 2>/dev/null || true'

    def process(self, output: list[str]) -> dict[str, dict[str, Any]]:
        roles = {}
        for line in output:
            name, login, members = line.split(":", 2)
            roles[name] = {
                "login": login == "true",
                "member_of": [m for m in members.split(",") if m],
            }
        return roles


class PostgresDatabases(FactBase):
    @staticmethod
    def default() -> list[str]:
        return []

    def command(self) -> str:
        return (
            f"{RUN_AS_POSTGRES} -d postgres -c 'SELECT datname FROM pg_database' "
            "2>/dev/null || true"
        )

    def process(self, output: list[str]) -> list[str]:
        return [line.strip() for line in output if line.strip()]


class RolePasswords(FactBase):
    """role -> ok | mismatch | missing-role | missing-secret | unknown (script not installed).

    One run of the script (one psql) for every role.
    """

    def command(self, pairs: tuple[tuple[str, str], ...]) -> str:
        arguments = " ".join(f"{role} {shlex.quote(path)}" for role, path in pairs)
        script = PASSWORD_SCRIPT
        return f"test -x {script} && {script} check {arguments} 2>/dev/null || true"

    def process(self, output: list[str]) -> list[str]:
        return [line.strip() for line in output]


def role_password_states(pairs: tuple[tuple[str, str], ...]) -> dict[str, str]:
    states = host.get_fact(RolePasswords, pairs=pairs) or []
    if len(states) != len(pairs):  # not installed yet, or it failed: set every password
        states = ["unknown"] * len(pairs)
    return {role: state for (role, _), state in zip(pairs, states, strict=True)}


def conf_dir(config: HostSettings) -> str:
    return f"/etc/postgresql/{config.postgres_version}/main"


def conf_dirs(config: HostSettings) -> list[str]:
    """The cluster's configuration directory, its parents below /etc and its conf.d."""
    main = conf_dir(config)
    return ["/etc/postgresql", main.rsplit("/", 1)[0], main, f"{main}/conf.d"]


def unit_name(config: HostSettings) -> str:
    return f"postgresql@{config.postgres_version}-main"


def conf_context(config: HostSettings) -> dict[str, object]:
    profile = config.profile
    memory = profile.limits_for("postgresql").memory_max_mb
    return {
        "rave_mode": config.rave_mode.value,
        "port": component("postgresql").ports[0].number,
        "max_connections": profile.postgres_max_connections,
        "shared_buffers_mb": profile.postgres_shared_buffers_mb,
        "effective_cache_size_mb": max(memory * 3 // 4, profile.postgres_shared_buffers_mb),
        "work_mem_mb": config.postgres_work_mem_mb,
        "maintenance_work_mem_mb": max(16, memory // 16),
        "log_min_duration_ms": config.postgres_log_min_duration_ms,
    }


def hba_context() -> dict[str, object]:
    rules = [{"database": database, "role": role} for role, (_, database, _) in ROLES.items()]
    return {"rules": rules}


def templates(config: HostSettings) -> dict[str, dict[str, object]]:
    return {
        "postgresql/rave.conf.j2": conf_context(config),
        "postgresql/pg_hba.conf.j2": hba_context(),
    }


@deploy("Database")
def database() -> None:
    config = settings()
    unit = unit_name(config)
    ensure_packages("Install PostgreSQL", component("postgresql").packages)

    # pg_createcluster makes these postgres's; root writes into them on every deploy (and the
    # upload's chown/chmod go by path), so they are root's: postgres reads, cannot swap a file
    # for a link there (pg_ctlcluster accepts a root-owned configuration)
    for directory in conf_dirs(config):
        ensure_directory(
            name=f"{directory} is root's (postgres reads it)",
            path=directory,
            user="root",
            group="postgres",
            mode="755",
        )
    conf = put_template(
        "PostgreSQL settings (localhost, scram-sha-256, sized by the mode)",
        "postgresql/rave.conf.j2",
        f"{conf_dir(config)}/conf.d/rave.conf",
        user="root",
        group="postgres",
        mode="644",
        **conf_context(config),
    )
    hba = put_template(
        "PostgreSQL client authentication (one role per service, scram-sha-256)",
        "postgresql/pg_hba.conf.j2",
        f"{conf_dir(config)}/pg_hba.conf",
        user="root",
        group="postgres",
        mode="640",
        **hba_context(),
    )
    limits = put_text(
        "PostgreSQL resource limits of the mode",
        f"/etc/systemd/system/{unit}.service.d/rave-limits.conf",
        limits_dropin_text(config.profile.limits_for("postgresql")),
    )
    sandbox = put_text(
        "PostgreSQL sandbox",
        f"/etc/systemd/system/{unit}.service.d/sandbox.conf",
        dropin_text(postgres_sandbox(config), None, "PostgreSQL sandbox (tasks/database.py)"),
    )
    ensure_service(
        name="Apply PostgreSQL's configuration",
        service=unit,
        running=True,
        enabled=True,
        restarted=True,
        daemon_reload=True,
        _if=any_changed(conf, hba, limits, sandbox),
    )
    ensure_service(name="PostgreSQL running", service=unit, running=True, enabled=True)

    roles = host.get_fact(PostgresRoles)
    for role, (_, _db, membership) in ROLES.items():
        if role not in roles:
            server.shell(
                name=f"Create role {role}",
                commands=[f'{RUN_AS_POSTGRES} -d postgres -c "CREATE ROLE {role} LOGIN"'],
            )
        elif not roles[role]["login"]:
            server.shell(
                name=f"Role {role} may log in",
                commands=[f'{RUN_AS_POSTGRES} -d postgres -c "ALTER ROLE {role} LOGIN"'],
            )
        if membership and membership not in roles.get(role, {}).get("member_of", []):
            server.shell(
                name=f"Role {role} is a member of {membership}",
                commands=[f'{RUN_AS_POSTGRES} -d postgres -c "GRANT {membership} TO {role}"'],
            )

    if DATABASE not in host.get_fact(PostgresDatabases):
        server.shell(
            name=f"Create database {DATABASE} (only {WRITER_ROLE} may connect)",
            commands=[
                f'{RUN_AS_POSTGRES} -d postgres -c "CREATE DATABASE {DATABASE}"',
                f'{RUN_AS_POSTGRES} -d postgres -c "REVOKE ALL ON DATABASE {DATABASE} FROM PUBLIC"',
                f'{RUN_AS_POSTGRES} -d postgres -c "GRANT CONNECT ON DATABASE {DATABASE} '
                f'TO {WRITER_ROLE}"',
            ],
        )

    install_host_script(
        "Role password setter (reads the secret file itself)",
        "files/postgresql/rave-pg-password",
        PASSWORD_SCRIPT,
    )
    secret_files = {
        role: secret_path("postgresql", secret) for role, (secret, _, _) in ROLES.items()
    }
    states = role_password_states(tuple(secret_files.items()))
    for role, secret_file in secret_files.items():
        state = states[role]
        changed = secrets_changed("postgresql")

        def needs_setting(state: str = state, changed: Callable[[], bool] = changed) -> bool:
            return state != "ok" or changed()

        server.shell(
            name=f"Set the password of role {role} from the secrets",
            commands=[f"{PASSWORD_SCRIPT} set {role} {secret_file}"],
            _if=needs_setting,
        )
