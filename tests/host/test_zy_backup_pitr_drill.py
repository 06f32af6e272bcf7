"""Point-in-time recovery onto a fresh host (runs late: it destroys and rebuilds the host).

Rows and webhook events are stored, the time is noted, then rows are deleted and more events
arrive; a backup runs. The host is destroyed (`rave-staging reset`) with the repository kept
aside as in the disaster-recovery drill, the fresh host is deployed, and ops/backup_restore.py
(scope host, target time) brings back the files and the cluster as it was at the noted time:
the rows and events from before it (row counts and checksums), none from after, the host
identity, a working webhook, and WAL archiving on the restored cluster's new timeline.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from tests.host.test_backup import _wait_pushed, backup, checksums, operator_op, psql
from tests.host.test_backup_pitr import _switch
from tests.host.test_zy_backup_drill import (
    _destroy_keeping_repository,
    _identity,
    _send_webhook_events,
    _stored,
    _wait_stored,
)

DRILL_DB = "rave_pitr_drill"


def test_point_in_time_recovery_onto_a_fresh_host(staging, host):
    name = staging.names[0]
    backup(host)  # a pgBackRest backup from before the noted time
    psql(host, f"DROP DATABASE IF EXISTS {DRILL_DB}")
    psql(host, f"CREATE DATABASE {DRILL_DB}")
    psql(
        host,
        "CREATE TABLE events (id bigint PRIMARY KEY, payload jsonb NOT NULL); "
        "INSERT INTO events SELECT g, jsonb_build_object('n', g, 'md5', md5(g::text)) "
        "FROM generate_series(1, 3000) g",
        db=DRILL_DB,
    )
    kept = _send_webhook_events(staging, 5)
    _wait_stored(host, kept)
    at_noted_time = checksums(host, DRILL_DB)
    identity = _identity(host)
    epoch = float(psql(host, "SELECT extract(epoch FROM clock_timestamp())"))
    noted = datetime.fromtimestamp(epoch, UTC).isoformat()
    time.sleep(1.5)
    psql(host, "DELETE FROM events WHERE id > 1000", db=DRILL_DB)  # the mistake
    lost = _send_webhook_events(staging, 5)
    _wait_stored(host, lost)
    assert checksums(host, DRILL_DB)["public.events"]["rows"] == 1000
    snapshot = backup(host)

    _destroy_keeping_repository(staging, host, name)

    deployed = staging.deploy(limit=name)
    assert deployed.ok, f"deploy of the fresh host failed: {deployed.summary()}"
    started = time.monotonic()
    restored = operator_op(
        "ops/backup_restore.py",
        "--limit",
        name,
        "--data",
        "backup_restore_scope=host",
        "--data",
        f"backup_restore_target_time={noted}",
        "--data",
        "backup_restore_confirm=true",
    )
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert f"RESTORED: snapshot {snapshot[:8]}, point in time" in restored.stdout
    elapsed = time.monotonic() - started
    staging.reconnect(name)  # strict known_hosts: the old host key is back

    assert _identity(host) == identity
    assert checksums(host, DRILL_DB) == at_noted_time
    assert _stored(host, kept) == len(kept)
    assert _stored(host, lost) == 0
    assert host.service("rave-webhook.service").is_running
    again = _send_webhook_events(staging, 1)
    _wait_stored(host, again)
    segment = _switch(host)
    assert int(segment[:8], 16) >= 2, segment  # the restored cluster's new timeline
    _wait_pushed(host, segment)
    backup(host)
    print(f"\nPITR onto a fresh host: restored to {noted} in {elapsed:.1f} s (after deploy)")
    psql(host, f"DROP DATABASE IF EXISTS {DRILL_DB}")
