"""PostgreSQL on a live staging host: localhost only, scram-sha-256, least-privilege roles,
migrated schema, settings sized by the mode."""

from __future__ import annotations

from rave.modes import PROFILES, Mode
from rave.webhook import migrate
from tests.host.edge_support import sql

PROFILE = PROFILES[Mode.SAFE]  # staging hosts run the default mode
UNIT = "postgresql@15-main"
SECRETS = "/run/rave/secrets/postgresql"


def test_running_and_listening_on_loopback_only(host):
    assert host.service(UNIT).is_running
    assert host.service(UNIT).is_enabled
    listening = [s for s in host.socket.get_listening_sockets() if s.endswith(":5432")]
    assert listening, "PostgreSQL does not listen on 5432"
    assert set(listening) <= {"tcp://127.0.0.1:5432", "tcp://::1:5432"}, listening


def test_settings_sized_by_the_mode(host):
    assert sql(host, "SHOW password_encryption", "postgres") == "scram-sha-256"
    assert sql(host, "SHOW listen_addresses", "postgres") == "localhost"
    assert sql(host, "SHOW shared_buffers", "postgres") == f"{PROFILE.postgres_shared_buffers_mb}MB"
    assert sql(host, "SHOW max_connections", "postgres") == str(PROFILE.postgres_max_connections)
    memory = PROFILE.limits_for("postgresql").memory_max_mb * 1024 * 1024
    assert host.check_output(f"systemctl show -p MemoryMax --value {UNIT}") == str(memory)


def test_roles_have_least_privilege(host):
    flags = sql(
        host,
        "SELECT rolname, rolsuper, rolcreatedb, rolcreaterole, rolcanlogin FROM pg_roles "
        "WHERE rolname IN ('rave_webhook', 'rave_exporter') ORDER BY 1",
        "postgres",
    )
    assert flags.splitlines() == ["rave_exporter|f|f|f|t", "rave_webhook|f|f|f|t"]
    assert (
        sql(host, "SELECT pg_has_role('rave_exporter', 'pg_monitor', 'member')", "postgres") == "t"
    )
    assert (
        sql(host, "SELECT pg_has_role('rave_webhook', 'pg_monitor', 'member')", "postgres") == "f"
    )
    privileges = sql(
        host,
        "SELECT has_table_privilege('rave_webhook', 'webhook_events', 'INSERT'), "
        "has_table_privilege('rave_webhook', 'webhook_events', 'SELECT'), "
        "has_table_privilege('rave_webhook', 'webhook_events', 'UPDATE'), "
        "has_table_privilege('rave_webhook', 'webhook_events', 'DELETE'), "
        "has_database_privilege('rave_exporter', 'rave_webhook', 'CONNECT'), "
        "has_database_privilege('rave_webhook', 'rave_webhook', 'CREATE')",
    )
    assert privileges == "t|f|f|f|f|f"


def test_passwords_are_the_secrets_and_scram(host):
    for role, secret in (
        ("rave_webhook", "postgres_webhook_password"),
        ("rave_exporter", "postgres_exporter_password"),
    ):
        check = host.run(f"/usr/local/sbin/rave-pg-password check {role} {SECRETS}/{secret}")
        assert check.stdout.strip() == "ok", (role, check.stdout, check.stderr)
        stored = sql(
            host, f"SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'", "postgres"
        )
        assert stored.startswith("SCRAM-SHA-256$")


def test_client_authentication(host):
    # the writer logs in over TCP with its secret; nothing logs in with a wrong password,
    # and no rule lets it reach another database
    login = (
        "cd / && runuser -u rave-webhook -- sh -c 'PGPASSWORD=$(cat "
        "/run/rave/secrets/webhook/postgres_webhook_password) psql -XAtq "
        '"host=127.0.0.1 user=rave_webhook dbname={db} connect_timeout=5" -c "SELECT 1"\''
    )
    assert host.run(login.format(db="rave_webhook")).stdout.strip() == "1"
    other = host.run(login.format(db="postgres"))
    assert other.rc != 0 and "pg_hba.conf rejects connection" in other.stderr
    wrong = host.run(
        "cd / && PGPASSWORD=wrong psql -XAtq "
        "'host=127.0.0.1 user=rave_webhook dbname=rave_webhook connect_timeout=5' -c 'SELECT 1'"
    )
    assert wrong.rc != 0 and "password authentication failed" in wrong.stderr
    superuser = host.run(
        "cd / && PGPASSWORD=x psql -XAtq "
        "'host=127.0.0.1 user=postgres dbname=postgres connect_timeout=5' -c 'SELECT 1'"
    )
    assert superuser.rc != 0


def test_schema_migrations_applied(host):
    applied = sql(host, "SELECT version, checksum FROM schema_migrations ORDER BY version")
    expected = [f"{m.version}|{m.checksum}" for m in migrate.available()]
    assert applied.splitlines() == expected
    assert sql(host, "SELECT to_regclass('webhook_events') IS NOT NULL") == "t"
