"""Runtime configuration, read from a JSON file rendered by the deploy (no secrets in it)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

DEFAULT_CONFIG = "/etc/rave-webhook/config.json"


@dataclass(frozen=True)
class Config:
    listen_host: str = "127.0.0.1"
    listen_port: int = 8001
    workers: int = 1
    http_impl: str = "h11"
    spool_dir: str = "/var/lib/rave-webhook/spool"
    spool_segment_bytes: int = 8 * 1_048_576
    spool_max_bytes: int = 1024 * 1_048_576
    max_body_bytes: int = 1_048_576
    standard_webhooks: bool = True
    gitlab: bool = False  # the token path is off unless configured (and tokens are installed)
    timestamp_tolerance_seconds: int = 300
    drain_batch: int = 500
    dead_letter_dir: str = "/var/lib/rave-webhook/deadletter"
    dead_letter_max_count: int = 10_000
    dead_letter_max_bytes: int = 64 * 1_048_576
    # each provider its own secrets; a provider whose list is empty (or unset) is not enabled
    hmac_secrets_file: str = "/run/rave/secrets/webhook/webhook_hmac_secrets"
    standard_secrets_file: str | None = None
    gitlab_tokens_file: str | None = None
    db_password_file: str = "/run/rave/secrets/webhook/postgres_webhook_password"
    db_host: str = "127.0.0.1"
    db_port: int = 5432
    db_name: str = "rave_webhook"
    db_user: str = "rave_webhook"
    # debug mode (rave/settings/debug.py): a log line per delivery and per connection, never a
    # header value or a body (they carry signatures, tokens and whatever the sender put in)
    debug: bool = False
    # tests only: a literal password instead of db_password_file
    db_password: str | None = None

    @classmethod
    def load(cls, path: str | None = None) -> Config:
        path = path or os.environ.get("RAVE_WEBHOOK_CONFIG", DEFAULT_CONFIG)
        data = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
        return cls(**data)

    def conninfo(self) -> str:
        from psycopg.conninfo import make_conninfo

        password = self.db_password
        if password is None:
            password = Path(self.db_password_file).read_text().strip()
        return make_conninfo(
            host=self.db_host,
            port=self.db_port,
            dbname=self.db_name,
            user=self.db_user,
            password=password,
            application_name="rave-webhook",
            connect_timeout=5,
        )


def load_secrets(path: str, allow_empty: bool = False) -> list[bytes]:
    """The active secrets: a JSON list of strings (several during a rotation)."""
    raw = json.loads(Path(path).read_text())
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(s, str) and s for s in raw):
        raise ValueError(f"{path}: expected a JSON list of non-empty strings")
    if not raw and not allow_empty:
        raise ValueError(f"{path}: expected at least one secret")
    return [s.encode() for s in raw]
