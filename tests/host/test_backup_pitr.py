"""Continuous WAL archiving and point-in-time restore on a live staging host.

Rows are inserted, the time is noted, more rows are inserted, changed and deleted, a backup
runs, and the cluster is restored to the noted time through the operator's op: exactly the
rows from before that time must be there (row counts and content checksums), archiving must
go on (on the new timeline), and the webhook must take events again.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime

from tests.host.test_backup import RB, backup, checksums, operator_op, psql, run
from tests.host.test_zy_backup_drill import _send_webhook_events, _wait_stored

PITR_DB = "rave_pitr"
SPOOL = "/var/lib/rave-backup/wal"
WAL_METRICS = "/var/lib/prometheus/node-exporter/rave_wal_archive.prom"


def _metrics(host) -> dict[str, float]:
    text = host.file(WAL_METRICS).content_string
    return {
        name: float(value)
        for name, value in (line.split() for line in text.splitlines() if line[:1] != "#")
    }


def _wait_in_spool(host, segment: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not host.file(f"{SPOOL}/{segment}.gz").exists:
        assert time.monotonic() < deadline, f"WAL segment {segment} never reached the spool"
        time.sleep(0.5)


def _switch(host) -> str:
    """Write something, close the segment; its name (pg_walfile_name of the switch)."""
    psql(host, "CREATE TEMP TABLE touch (a int); INSERT INTO touch VALUES (1)")
    return psql(host, "SELECT pg_walfile_name(pg_switch_wal())").strip()


def test_wal_is_archived_durably_into_the_spool_with_metrics(host):
    assert psql(host, "SHOW archive_mode").strip() == "on"
    assert psql(host, "SHOW archive_timeout").strip() == "5min"
    assert "rave-wal-archive" in psql(host, "SHOW archive_command")
    spool = host.file(SPOOL)
    assert (spool.user, spool.mode) == ("postgres", 0o700)
    segment = _switch(host)
    _wait_in_spool(host, segment)
    # a retry of the same segment with the same content succeeds, other content is refused
    copy = run(host, "mktemp").stdout.strip()
    run(host, f"gzip -dc {SPOOL}/{segment}.gz > {copy} && chown postgres {copy}")
    archive = f"/usr/local/sbin/rave-wal-archive {SPOOL} {copy} {segment}"
    run(host, f"runuser -u postgres -- {archive}")
    run(host, f"echo changed >> {copy}")
    refused = run(host, f"runuser -u postgres -- {archive}", expect=1)
    assert "exists with other content" in refused.stderr
    run(host, f"rm -f {copy}")

    status = run(host, f"{RB} wal-status").stdout
    assert "rave_wal_archive_enabled 1" in status
    values = _metrics(host)
    assert values["rave_wal_archive_up"] == 1
    assert values["rave_wal_archive_last_archived_timestamp_seconds"] > time.time() - 120
    assert values["rave_wal_archive_ready_segments"] == 0
    assert host.file(WAL_METRICS).mode == 0o644
    assert host.service("rave-backup-wal-status.timer").is_enabled
    assert host.service("rave-backup-wal-status.timer").is_running


def test_a_backup_holds_a_base_backup_and_the_wal_then_prunes_the_spool(host):
    snapshot = backup(host)
    listing = run(host, f"{RB} ls --snapshot {snapshot}").stdout.splitlines()
    bases = [p for p in listing if re.search(r"/base/[0-9TZ]+/rave-base\.json$", p)]
    assert bases, "no base backup in the snapshot"
    assert any(p.endswith("/base.tar.gz") for p in listing)
    wal = [p for p in listing if p.startswith(f"{SPOOL}/") and p.endswith(".gz")]
    assert wal, "no archived WAL in the snapshot"
    # the spool keeps only WAL from the newest base backup's start on
    info = json.loads(run(host, f"cat {bases[-1]}").stdout)
    left = run(host, f"ls {SPOOL}").stdout.split()
    segments = [n for n in left if re.fullmatch(r"[0-9A-F]{24}\.gz", n)]
    assert all(n[8:24] >= info["start_wal"][8:] for n in segments), (info, left)
    assert _metrics(host)["rave_wal_archive_last_backed_up_timestamp_seconds"] > 0


def _create(host) -> None:
    psql(host, f"DROP DATABASE IF EXISTS {PITR_DB}")
    psql(host, f"CREATE DATABASE {PITR_DB}")
    psql(
        host,
        "CREATE TABLE items (id bigint PRIMARY KEY, body text NOT NULL); "
        "INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 1000) g",
        db=PITR_DB,
    )


def test_restore_to_a_point_in_time(staging, host):
    backup(host)  # a base backup older than the noted time (one is taken when none exists)
    _create(host)
    accepted_before = _send_webhook_events(staging, 3)
    _wait_stored(host, accepted_before)
    at_noted_time = checksums(host, PITR_DB)
    assert at_noted_time["public.items"]["rows"] == 1000
    epoch = float(psql(host, "SELECT extract(epoch FROM clock_timestamp())"))
    noted = datetime.fromtimestamp(epoch, UTC).isoformat()
    time.sleep(1.5)
    psql(
        host,
        "INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1001, 1500) g; "
        "DELETE FROM items WHERE id % 10 = 0; UPDATE items SET body = 'changed' WHERE id < 50",
        db=PITR_DB,
    )
    accepted_after = _send_webhook_events(staging, 3)
    _wait_stored(host, accepted_after)
    changed = checksums(host, PITR_DB)
    assert changed["public.items"]["rows"] == 1350
    backup(host)

    # a time after every snapshot is refused before anything is touched
    future = run(host, f"{RB} restore --target-time 2100-01-01T00:00:00Z --yes", expect=3)
    assert "take a backup first" in future.stderr
    dry = run(host, f"{RB} restore --target-time {noted}").stdout
    assert "dry run: nothing changed" in dry and "base backup" in dry
    assert checksums(host, PITR_DB) == changed

    started = time.monotonic()
    result = operator_op(
        "ops/backup_restore.py",
        "--data",
        f"backup_restore_target_time={noted}",
        "--data",
        "backup_restore_confirm=true",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "RESTORED: snapshot" in result.stdout and "point in time" in result.stdout
    elapsed = time.monotonic() - started

    # exactly the rows of the noted time: count and content checksum
    assert checksums(host, PITR_DB) == at_noted_time
    webhook_events = "SELECT count(*) FROM webhook_events WHERE delivery_id = ANY(%s)"
    ids = "ARRAY[" + ",".join(f"'{d}'" for d in accepted_before + accepted_after) + "]"
    stored = psql(host, webhook_events.replace("%s", ids), db="rave_webhook").strip()
    assert stored == str(len(accepted_before))  # the later ones were after the noted time
    assert psql(host, "SELECT pg_is_in_recovery()").strip() == "f"
    assert not host.file("/etc/postgresql/15/main/conf.d/zz-rave-recovery.conf").exists
    assert not host.file("/var/lib/postgresql/15/main__pre_restore").exists

    # the webhook takes events again, archiving goes on (a new timeline), backups work
    assert host.service("rave-webhook.service").is_running
    again = _send_webhook_events(staging, 2)
    _wait_stored(host, again)
    segment = _switch(host)
    assert int(segment[:8], 16) >= 2, segment
    _wait_in_spool(host, segment)
    backup(host)
    print(f"\nPITR: restored to {noted} in {elapsed:.1f} s (1000 rows of 1350 back, 3 of 6 events)")
    psql(host, f"DROP DATABASE IF EXISTS {PITR_DB}")
