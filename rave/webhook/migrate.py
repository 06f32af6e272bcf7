"""Versioned schema migrations of the webhook database, applied idempotently.

`python3 -m rave_webhook.migrate apply` (as the postgres user, peer authentication over the
unix socket) applies every migrations/NNNN_name.sql not yet in schema_migrations, each in its
own transaction together with its schema_migrations row, and prints one line per migration
applied (nothing when up to date). A migration already applied whose file changed is refused:
migrations are append-only, never edited. `pending` lists what `apply` would do.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
DEFAULT_DSN = "host=/var/run/postgresql dbname=rave_webhook"

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available(directory: Path = MIGRATIONS) -> list[Migration]:
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = NAME.match(path.name)
        if not match:
            raise SystemExit(f"migration file name not NNNN_name.sql: {path.name}")
        migrations.append(Migration(match.group(1), path.stem, path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise SystemExit("two migrations share a version number")
    return migrations


def applied(conn: Any) -> dict[str, str]:
    cursor = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not cursor.fetchone()[0]:
        return {}
    rows = conn.execute("SELECT version, checksum FROM schema_migrations")
    return {version: checksum for version, checksum in rows.fetchall()}


def pending(conn: Any, migrations: list[Migration]) -> list[Migration]:
    done = applied(conn)
    for migration in migrations:
        if migration.version in done and done[migration.version] != migration.checksum:
            raise SystemExit(
                f"migration {migration.name} was changed after it was applied: "
                "add a new migration instead"
            )
    return [m for m in migrations if m.version not in done]


def apply(conn: Any, migrations: list[Migration]) -> list[str]:
    names = []
    with conn.transaction():
        conn.execute(CREATE_TABLE)
    for migration in pending(conn, migrations):
        with conn.transaction():
            # serialise concurrent runs: the second one finds the row and skips
            conn.execute("LOCK TABLE schema_migrations IN EXCLUSIVE MODE")
            row = conn.execute(
                "SELECT 1 FROM schema_migrations WHERE version = %s", (migration.version,)
            ).fetchone()
            if row:
                continue
            conn.execute(migration.sql)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
        names.append(migration.name)
    return names


def main(argv: list[str] | None = None) -> int:
    import psycopg

    parser = argparse.ArgumentParser(prog="rave_webhook.migrate")
    parser.add_argument("command", choices=["apply", "pending", "list"])
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    args = parser.parse_args(argv)
    migrations = available()
    if args.command == "list":
        for migration in migrations:
            print(migration.name)
        return 0
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        if args.command == "pending":
            for migration in pending(conn, migrations):
                print(migration.name)
            return 0
        for name in apply(conn, migrations):
            print(f"applied {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
