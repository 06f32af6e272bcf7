"""Continuous WAL archiving by pgBackRest and point-in-time restore on a live staging host.

WAL segments are pushed into the encrypted pgBackRest repository as PostgreSQL completes them
(a failing push is counted and recovers). Rows are inserted, the time is noted, more rows are
inserted, changed and deleted, a backup runs, and the cluster is restored to the noted time
through the operator's op: exactly the rows from before that time must be there (row counts
and content checksums), archiving must go on (on the new timeline), and the webhook must take
events again.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from tests.host.test_backup import (
    PGBACKREST,
    PGBACKREST_REPOSITORY,
    RB,
    _wait_pushed,
    backup,
    checksums,
    operator_op,
    pgbackrest_info,
    psql,
    run,
    state,
)
from tests.host.test_zy_backup_drill import _send_webhook_events, _wait_stored

PITR_DB = "rave_pitr"
REPOSITORY = PGBACKREST_REPOSITORY
CIPHER_PASS = "/run/rave/secrets/postgresql/backup_pgbackrest_cipher_password"
WAL_METRICS = "/var/lib/prometheus/node-exporter/rave_wal_archive.prom"


def _metrics(host) -> dict[str, float]:
    text = host.file(WAL_METRICS).content_string
    return {
        name: float(value)
        for name, value in (line.split() for line in text.splitlines() if line[:1] != "#")
    }


def _switch(host) -> str:
    """Write something, close the segment; its name (pg_walfile_name of the switch)."""
    psql(host, "CREATE TEMP TABLE touch (a int); INSERT INTO touch VALUES (1)")
    return psql(host, "SELECT pg_walfile_name(pg_switch_wal())").strip()


def test_wal_is_pushed_into_the_encrypted_repository_with_metrics(host):
    assert psql(host, "SHOW archive_mode").strip() == "on"
    assert psql(host, "SHOW archive_timeout").strip() == "1min"
    assert f"{PGBACKREST} archive-push %p" in psql(host, "SHOW archive_command")
    segment = _switch(host)
    _wait_pushed(host, segment)
    run(host, f"runuser -u postgres -- {PGBACKREST} check")
    # encrypted at rest: the pushed segment is OpenSSL-salted ciphertext, not zstd
    pushed = run(host, f"find {REPOSITORY}/archive -name '{segment}-*' -type f").stdout.split()
    assert pushed, f"{segment} is not in {REPOSITORY}"
    assert run(host, f"head -c 8 {pushed[0]}").stdout == "Salted__"
    # another pass opens nothing
    wrong = run(
        host,
        "runuser -u postgres -- env PGBACKREST_REPO1_CIPHER_PASS=not-the-pass "
        "pgbackrest --stanza=rave info --output=json",
        expect=None,
    )
    # (what it prints holds bytes of the wrongly decrypted file: compared as bytes)
    assert b'"status":{"code":0,' not in wrong.stdout_bytes.replace(b" ", b"")
    assert b'"status":{"code":0,' in run(
        host, f"runuser -u postgres -- {PGBACKREST} info --output=json"
    ).stdout_bytes.replace(b" ", b"")
    # the pass is in no configuration file, log or journal line
    for where in ("/etc/pgbackrest", "/etc/postgresql", "/etc/rave", "/var/log/pgbackrest"):
        found = run(host, f"grep -rlF -f {CIPHER_PASS} {where}", expect=None)
        assert found.rc == 1, f"the cipher pass is in {found.stdout}"
    journal = run(host, f"journalctl -o cat --no-pager | grep -cF -f {CIPHER_PASS}", expect=None)
    assert journal.stdout.strip() == "0"

    status = run(host, f"{RB} wal-status").stdout
    assert "rave_wal_archive_enabled 1" in status
    values = _metrics(host)
    assert values["rave_wal_archive_up"] == 1
    assert values["rave_wal_archive_last_archived_timestamp_seconds"] > time.time() - 120
    assert values["rave_wal_archive_lag_seconds"] < 120
    assert values["rave_wal_archive_ready_segments"] == 0
    assert host.file(WAL_METRICS).mode == 0o644
    assert host.service("rave-backup-wal-status.timer").is_enabled
    assert host.service("rave-backup-wal-status.timer").is_running


def test_a_failing_push_is_counted_and_recovers(host):
    """The repository unwritable (a full or unmounted disk): archive-push fails, PostgreSQL
    keeps the segment and retries; the metrics say so (WalArchivingFailing); then it recovers."""
    before = _metrics(host)
    archive = f"{REPOSITORY}/archive"
    run(host, f"chmod 000 {archive}")
    try:
        segment = _switch(host)
        deadline = time.monotonic() + 90
        while True:
            run(host, f"{RB} wal-status")
            values = _metrics(host)
            if values["rave_wal_archive_failed_total"] > before["rave_wal_archive_failed_total"]:
                break
            assert time.monotonic() < deadline, "a failing archive-push was never counted"
            time.sleep(2)
        assert (
            values["rave_wal_archive_last_failed_timestamp_seconds"]
            > values["rave_wal_archive_last_archived_timestamp_seconds"]
        )  # the WalArchivingFailing condition
        assert values["rave_wal_archive_ready_segments"] >= 1
    finally:
        run(host, f"chmod 750 {archive}")
    _wait_pushed(host, segment, timeout=120)  # PostgreSQL retries the same segment


def test_a_backup_run_takes_a_pgbackrest_backup_and_restic_holds_no_wal(host):
    snapshot = backup(host)
    backups = pgbackrest_info(host)["backup"]
    assert backups and backups[0]["type"] == "full"
    assert state(host)["pgbackrest_label"] == backups[-1]["label"]
    backup(host)
    newest = pgbackrest_info(host)["backup"][-1]
    assert newest["type"] == "diff", newest  # the full one is recent: a differential one
    listing = run(host, f"{RB} ls --snapshot {snapshot}").stdout.splitlines()
    assert not [p for p in listing if p.startswith("/var/lib/rave-backup/wal")]
    assert (
        _metrics(host)["rave_pgbackrest_backup_last_timestamp_seconds"]
        >= (newest["timestamp"]["stop"])
    )


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
    backup(host)  # a pgBackRest backup older than the noted time
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

    # a time before every pgBackRest backup is refused before anything is touched
    past = run(host, f"{RB} restore --target-time 2000-01-01T00:00:00Z --yes", expect=3)
    assert "earliest point it can restore" in past.stderr
    dry = run(host, f"{RB} restore --target-time {noted}").stdout
    assert "dry run: nothing changed" in dry and "pgBackRest" in dry
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
    assert not host.file("/var/lib/postgresql/15/main/recovery.signal").exists
    assert not host.file("/var/lib/postgresql/15/main__pre_restore").exists

    # the webhook takes events again, archiving goes on (a new timeline), backups work
    assert host.service("rave-webhook.service").is_running
    again = _send_webhook_events(staging, 2)
    _wait_stored(host, again)
    segment = _switch(host)
    assert int(segment[:8], 16) >= 2, segment
    _wait_pushed(host, segment)
    backup(host)
    print(f"\nPITR: restored to {noted} in {elapsed:.1f} s (1000 rows of 1350 back, 3 of 6 events)")
    psql(host, f"DROP DATABASE IF EXISTS {PITR_DB}")
