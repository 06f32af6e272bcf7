"""Disaster-recovery drill (runs late: it destroys and rebuilds the staging host).

Host A takes events, is backed up, then takes more events that no backup run covers: they
reach the pgBackRest repository only as WAL that PostgreSQL pushes (archive_timeout). Once
that WAL is there A is destroyed (`rave-staging reset`: a fresh Debian root, or the RAVE image
again on a host booted from it, docs/image.md) without a final backup. The repositories survive
A: they are copied to the control machine at the moment of the loss and put back on the fresh
host before its deploy, standing in for remote ones. The fresh host is deployed from the same
inventory, then ops/backup_restore.py (scope host) restores it. Every database table (row
counts and content checksums, which covers every webhook event, the unbacked ones too), the
encrypted secrets file and the host identity (SSH host key) must come back; the recovery point
and recovery time are printed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from rave.components import component
from rave.secrets import crypto
from rave.secrets.store import STAGING_IDENTITY, Environment
from tests.host.conftest import rave_staging
from tests.host.test_backup import RB, _wait_pushed, backup, operator_op, psql, run

DRILL_DB = "rave_drill"
REPOSITORY_PARENT = "/var/backups/rave"
ARCHIVE_TIMEOUT = 60  # backup_wal_archive_timeout_sec's default
MARGIN = 30


def _identity(host) -> dict:
    return {
        "host_key": run(host, "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[1],
        "secrets_file": run(
            host, "sha256sum /etc/rave/secrets.age 2>/dev/null || echo absent"
        ).stdout.split()[0],
    }


def _databases(host) -> dict:
    return {
        db: json.loads(run(host, f"{RB} checksums --db {db}").stdout)
        for db in run(host, f"{RB} databases").stdout.split()
    }


def _ssh(staging, name: str, command: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ssh", "-F", str(staging.instance.ssh_config), name, command],
        check=False,
        timeout=600,
        **kwargs,
    )


WEBHOOK_PORT = next(p.number for p in component("nginx").ports if p.exposure == "public")
WEBHOOK_EVENTS = 40


def _send_webhook_events(staging, count: int) -> list[str]:
    """Signed GitHub-style deliveries through nginx to the webhook; their delivery ids."""
    state = staging.instance.state
    secrets = Environment.named("staging", state / "secrets").decrypt(
        crypto.load_identities(state / STAGING_IDENTITY)
    )
    key = secrets.webhook_hmac_secrets[0].encode()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # staging's certificate is self-signed
    url = f"https://{staging.address(staging.names[0])}:{WEBHOOK_PORT}/webhook"
    deliveries = []
    with httpx.Client(verify=context, timeout=30) as client:
        for n in range(count):
            delivery = str(uuid.uuid4())
            # unique content too: the same signed body again is a replay (answered 200)
            body = json.dumps({"drill": n, "ref": "refs/heads/main", "id": delivery}).encode()
            signature = hmac.new(key, body, hashlib.sha256).hexdigest()
            response = client.post(
                url,
                content=body,
                headers={
                    "Content-Type": "application/json",
                    "X-GitHub-Event": "push",
                    "X-GitHub-Delivery": delivery,
                    "X-Hub-Signature-256": f"sha256={signature}",
                },
            )
            assert response.status_code == 202, response.text
            deliveries.append(delivery)
    return deliveries


def _stored(host, deliveries: list[str]) -> int:
    ids = ",".join(f"'{d}'" for d in deliveries)
    return int(
        psql(
            host,
            f"SELECT count(*) FROM webhook_events WHERE delivery_id IN ({ids})",
            db="rave_webhook",
        ).strip()
    )


def _wait_stored(host, deliveries: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _stored(host, deliveries) != len(deliveries):
        assert time.monotonic() < deadline, "accepted events never reached the database"
        time.sleep(0.5)


def _events(host) -> int:
    """The drill's own table besides the webhook's events (a second project database)."""
    psql(host, f"DROP DATABASE IF EXISTS {DRILL_DB}")
    psql(host, f"CREATE DATABASE {DRILL_DB}")
    psql(
        host,
        "CREATE TABLE events (id bigserial PRIMARY KEY, received_at timestamptz NOT NULL "
        "DEFAULT now(), payload jsonb NOT NULL); INSERT INTO events (payload) SELECT "
        "jsonb_build_object('delivery', g, 'body', md5(g::text)) FROM generate_series(1, 5000) g",
        db=DRILL_DB,
    )
    return 5000


def _destroy_keeping_repository(staging, host, name: str) -> float:
    """Reset the host to a fresh Debian root; its restic repository is copied to the control
    machine first and put back afterwards (standing in for a remote repository). Returns the
    monotonic time the reset started."""
    with tempfile.TemporaryDirectory(prefix="rave-drill-") as tmp:
        archive = Path(tmp) / "repository.tar"
        with archive.open("wb") as out:
            copied = _ssh(
                staging,
                name,
                f"sudo tar -C {REPOSITORY_PARENT} -cf - restic pgbackrest",
                stdout=out,
            )
        assert copied.returncode == 0 and archive.stat().st_size > 0

        disaster = time.monotonic()
        rave_staging("reset", "--host", str(staging.index(name)))
        staging.reconnect(name)
        # a fresh Debian root, or a host booted from the image (the deploy without host state)
        assert not host.file("/etc/rave/secrets.age").exists, "the reset left the host"

        with archive.open("rb") as src:
            put_back = _ssh(
                staging,
                name,
                f"sudo install -d -m 755 {REPOSITORY_PARENT} && "
                f"sudo tar -C {REPOSITORY_PARENT} -xf -",
                stdin=src,
            )
        assert put_back.returncode == 0
    return disaster


def test_disaster_recovery_drill(staging, host):
    name = staging.names[0]
    events = _events(host)
    deliveries = _send_webhook_events(staging, WEBHOOK_EVENTS)
    _wait_stored(host, deliveries)
    snapshot = backup(host)
    # after the last backup run: only the WAL that PostgreSQL pushes carries these
    unbacked = _send_webhook_events(staging, WEBHOOK_EVENTS)
    _wait_stored(host, unbacked)
    last_write = time.monotonic()
    segment = psql(host, "SELECT pg_walfile_name(pg_current_wal_lsn())").strip()
    before_identity = _identity(host)
    before_databases = _databases(host)
    assert before_databases[DRILL_DB]["public.events"]["rows"] == events
    # archive_timeout closes the segment; nothing else forces it (no pg_switch_wal, no backup)
    _wait_pushed(host, segment, timeout=ARCHIVE_TIMEOUT + MARGIN)
    recovery_point = time.monotonic() - last_write

    disaster = _destroy_keeping_repository(staging, host, name)

    deploy_started = time.monotonic()
    deployed = staging.deploy(limit=name)
    assert deployed.ok, f"deploy of the fresh host failed: {deployed.summary()}"
    restore_started = time.monotonic()
    restored = operator_op(
        "ops/backup_restore.py",
        "--limit",
        name,
        "--data",
        "backup_restore_scope=host",
        "--data",
        f"backup_snapshot={snapshot}",
        "--data",
        "backup_restore_confirm=true",
    )
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert f"RESTORED: snapshot {snapshot[:8]} (scope host)" in restored.stdout
    recovered = time.monotonic()
    if staging.instance.host(staging.index(name)).image() is not None:
        # a host booted from the image made a new key at first boot; the restore brought the
        # old one back (checked below): pin it
        rave_staging("pin-key", "--host", str(staging.index(name)))
    staging.reconnect(name)  # strict known_hosts: the same host key answers

    assert _identity(host) == before_identity
    after_databases = _databases(host)
    assert after_databases == before_databases  # every table, every event, byte for byte
    assert _stored(host, deliveries) == len(deliveries)  # every accepted webhook event
    assert _stored(host, unbacked) == len(unbacked)  # those after the last backup run too
    assert host.service("rave-secrets.service").is_running
    assert host.service("rave-backup.timer").is_running
    assert host.service("rave-webhook.service").is_running
    after = _send_webhook_events(staging, 1)  # the restored host takes events again
    _wait_stored(host, after)
    print(
        f"\nDR drill: {len(deliveries)} + {len(unbacked)} webhook events (the latter after the "
        f"last backup run), {events} rows of {DRILL_DB}, "
        f"{len(before_databases)} database(s) restored "
        f"from snapshot {snapshot[:8]}; host key {before_identity['host_key']} kept.\n"
        f"recovery point: the last write was in the repository {recovery_point:.1f} s after "
        f"it (archive_timeout {ARCHIVE_TIMEOUT} s); "
        f"recovery time {recovered - disaster:.1f} s (reset {deploy_started - disaster:.1f} s, "
        f"deploy {restore_started - deploy_started:.1f} s, "
        f"restore {recovered - restore_started:.1f} s)"
    )
    psql(host, f"DROP DATABASE IF EXISTS {DRILL_DB}")
