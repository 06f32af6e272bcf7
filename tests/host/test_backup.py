"""Backups on a live staging host: units, metrics, restore == original, a wrong password,
a backup killed mid-way, maintenance. Every wait is a poll with a deadline.

The tests use their own database (rave_backup_test, every common column type) so they do not
depend on the webhook's schema; the project's databases are dumped and checked alongside.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from rave.deployrun import REPO, pyinfra_bin
from tests.host.units import start_unit

RB = "/usr/local/sbin/rave-backup"
REPOSITORY = "/var/backups/rave/restic"  # the settings' default (staging keeps it local)
PGBACKREST = "/usr/local/sbin/rave-pgbackrest"
PGBACKREST_REPOSITORY = "/var/backups/rave/pgbackrest"  # the default (staging: local)
TEST_DB = "rave_backup_test"
METRICS = "/var/lib/prometheus/node-exporter/rave_backup.prom"

SCHEMA = f"""
CREATE TABLE items (
    id bigserial PRIMARY KEY, name text, body jsonb, amount numeric(12, 3), ratio double precision,
    raw bytea, at timestamptz, flag boolean, tags text[]
);
INSERT INTO items (name, body, amount, ratio, raw, at, flag, tags)
SELECT 'item ' || g || E' with ''quotes'', tabs\\t and\\nnewlines',
       jsonb_build_object('n', g, 's', md5(g::text), 'nested', jsonb_build_array(g, null, true)),
       g * 1.125, g / 7.0, decode(md5(g::text), 'hex'),
       '2026-01-01'::timestamptz + g * interval '1 min',
       g % 2 = 0, ARRAY['a' || g, NULL]
FROM generate_series(1, 20000) g;
INSERT INTO items (name) VALUES (NULL);
CREATE TABLE "Odd Name" (k text PRIMARY KEY, v text);
INSERT INTO "Odd Name" VALUES ('x', 'y'), ('ü', 'ß');
CREATE SCHEMA other;
CREATE TABLE other.empty (a int);
ALTER DATABASE {TEST_DB} SET work_mem = '8MB';
"""


def run(host, command: str, *args: str, expect: int | None = 0):
    result = host.run(command, *args)  # testinfra quotes each of args
    if expect is not None:
        assert result.rc == expect, (
            f"`{command}` exited {result.rc} (expected {expect}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def psql(host, sql: str, db: str = "postgres") -> str:
    return run(
        host, "sudo -u postgres psql -X -q -At -v ON_ERROR_STOP=1 -d %s -c %s", db, sql
    ).stdout


def checksums(host, db: str = TEST_DB) -> dict:
    return json.loads(run(host, f"{RB} checksums --db {db}").stdout)


def state(host) -> dict:
    return json.loads(run(host, "cat /var/lib/rave-backup/state.json").stdout)


def backup(host) -> str:
    """One run of the real unit; returns the new snapshot's id."""
    result = start_unit(host, "rave-backup.service")
    journal = run(host, "journalctl -u rave-backup.service -n 30 --no-pager -o cat").stdout
    assert result.rc == 0, f"rave-backup.service failed:\n{result.stderr}\n{journal}"
    current = state(host)
    assert current["last_exit_code"] == 0
    return current["last_snapshot"]


def pgbackrest_info(host) -> dict:
    out = run(host, f"runuser -u postgres -- {PGBACKREST} info --output=json").stdout
    return json.loads(out)[0]


def _pushed(host) -> str:
    """The newest WAL segment in the repository ('' if none)."""
    return max((a.get("max") or "" for a in pgbackrest_info(host).get("archive") or []), default="")


def _wait_pushed(host, segment: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _pushed(host) < segment:
        assert time.monotonic() < deadline, f"WAL segment {segment} never reached the repository"
        time.sleep(0.5)


def operator_op(*args: str) -> subprocess.CompletedProcess[str]:
    """An ops/ file through pyinfra, as an operator runs it (its printed output is checked)."""
    return subprocess.run(
        [pyinfra_bin(), "-y", "inventories/staging.py", *args],
        cwd=REPO,
        env={**os.environ, "PYINFRA_PROGRESS": "off"},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


@pytest.fixture(scope="module")
def test_db(host):
    psql(host, f"DROP DATABASE IF EXISTS {TEST_DB}")
    psql(host, f"CREATE DATABASE {TEST_DB}")
    psql(host, SCHEMA, db=TEST_DB)
    yield TEST_DB
    psql(host, f"DROP DATABASE IF EXISTS {TEST_DB}")


def test_timers_are_scheduled_with_a_random_delay(host):
    for timer in ("rave-backup.timer", "rave-backup-maintenance.timer"):
        assert host.service(timer).is_enabled
        assert host.service(timer).is_running
        delay = run(host, f"systemctl show -p RandomizedDelayUSec --value {timer}").stdout.strip()
        assert delay not in ("", "0"), f"{timer} has no randomized delay"
    shown = run(host, "systemctl show rave-backup.service").stdout
    assert "ProtectSystem=strict" in shown
    assert "NoNewPrivileges=yes" in shown
    assert (
        "rave-secrets.service"
        in run(host, "systemctl show -p Requires --value rave-backup.service").stdout
    )
    # the password is read from the secrets tmpfs, never passed on a command line
    assert "password" not in run(host, "systemctl cat rave-backup.service").stdout.lower()


def test_a_backup_holds_dumps_secrets_host_keys_and_no_prometheus_data(host, test_db):
    started = time.time()
    snapshot = backup(host)
    listing = run(host, f"{RB} ls --snapshot {snapshot}").stdout.splitlines()
    for path in (
        "/var/lib/rave-backup/dump/manifest.json",
        "/var/lib/rave-backup/dump/globals.sql",
        f"/var/lib/rave-backup/dump/{TEST_DB}.dump",
        "/etc/ssh/ssh_host_ed25519_key",
        "/etc/ssh/ssh_host_ed25519_key.pub",
    ):
        assert path in listing, f"{path} is not in snapshot {snapshot}"
    if host.file("/etc/rave/secrets.age").exists:
        assert "/etc/rave/secrets.age" in listing
    assert not [p for p in listing if p.startswith("/var/lib/prometheus")]
    # every project database is dumped, not only ours
    databases = run(host, f"{RB} databases").stdout.split()
    assert TEST_DB in databases
    for db in databases:
        assert f"/var/lib/rave-backup/dump/{db}.dump" in listing
    metrics = host.file(METRICS)
    assert metrics.exists, "no backup metrics for the node exporter"
    values = dict(
        line.split() for line in metrics.content_string.splitlines() if not line.startswith("#")
    )
    assert float(values["rave_backup_last_success_timestamp_seconds"]) >= started - 5
    assert values["rave_backup_last_exit_code"] == "0"
    assert int(values["rave_backup_last_size_bytes"]) > 0
    assert float(values["rave_backup_last_duration_seconds"]) > 0
    assert metrics.mode == 0o644


def test_a_restore_equals_the_original(host, test_db):
    original = checksums(host)
    assert original["public.items"]["rows"] == 20001
    snapshot = backup(host)
    # damage: rows gone, rows changed, a table dropped, one added
    psql(host, "DELETE FROM items WHERE id % 3 = 0", db=TEST_DB)
    psql(host, "UPDATE items SET name = 'changed' WHERE id % 5 = 0", db=TEST_DB)
    psql(host, 'DROP TABLE "Odd Name"', db=TEST_DB)
    psql(host, "CREATE TABLE intruder (a int)", db=TEST_DB)
    assert checksums(host) != original

    dry = run(host, f"{RB} restore --scope database --snapshot {snapshot}").stdout
    assert "dry run: nothing changed" in dry
    assert checksums(host) != original

    out = run(host, f"{RB} restore --scope database --snapshot {snapshot} --yes").stdout
    assert f"RESTORED: snapshot {snapshot[:8]}" in out
    assert checksums(host) == original  # every table: row count and content checksum
    settings = psql(
        host,
        f"SELECT setconfig FROM pg_db_role_setting s JOIN pg_database d "
        f"ON d.oid = s.setdatabase WHERE d.datname = '{TEST_DB}'",
    )
    assert "work_mem=8MB" in settings  # database-level properties came back too
    assert not psql(host, "SELECT datname FROM pg_database WHERE datname LIKE '%pre_restore'")

    # the operator's verify: a real restore into a scratch database, compared with the live one
    result = operator_op(
        "ops/backup_verify.py",
        "--data",
        f"backup_snapshot={snapshot}",
        "--data",
        "backup_verify_strict_live=true",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"VERIFIED: snapshot {snapshot[:8]}" in result.stdout
    assert "public.items" in result.stdout and "MISMATCH" not in result.stdout
    assert "FILE /etc/ssh/ssh_host_ed25519_key: restored, same as live" in result.stdout
    assert not psql(host, "SELECT datname FROM pg_database WHERE datname LIKE 'rave_verify_%'")


def _host_state(host) -> dict:
    return {
        "files": run(
            host,
            "sha256sum /etc/ssh/ssh_host_ed25519_key* && "
            "find /etc/rave /var/lib/rave-backup -xdev -type f ! -name lock "
            "-exec sha256sum {} + "
            "| sort",
        ).stdout,
        "databases": run(host, f"{RB} databases").stdout,
        "test_db": checksums(host),
        "snapshots": run(host, f"{RB} list").stdout,
        "services": run(
            host,
            "systemctl list-units --state=active --no-legend --plain "
            "--type=service | awk '{print $1}' | sort",
        ).stdout,
    }


def test_a_wrong_password_is_refused_and_the_host_is_untouched(host, test_db):
    run(
        host,
        "install -m 600 /dev/null /root/wrong-password && "
        "echo not-the-password > /root/wrong-password",
    )
    before = _host_state(host)
    for command in (
        f"{RB} --password-file /root/wrong-password restore --scope host --yes",
        f"{RB} --password-file /root/wrong-password restore --scope database --yes",
        f"{RB} --password-file /root/wrong-password verify",
    ):
        result = run(host, command, expect=2)
        assert "refused the password" in result.stderr
        assert "nothing was changed" in result.stderr
    # the operator's op says so too, and fails
    result = operator_op(
        "ops/backup_restore.py",
        "--data",
        "backup_password_file=/root/wrong-password",
        "--data",
        "backup_restore_scope=host",
        "--data",
        "backup_restore_confirm=true",
    )
    assert result.returncode != 0
    assert "refused the password" in result.stdout + result.stderr
    after = _host_state(host)
    assert after == before
    run(host, "rm -f /root/wrong-password")


KILL_SCRIPT = r"""
set -u
touch /tmp/kill-marker
systemctl start --no-block rave-backup.service
for i in $(seq 1 1200); do
    pid=$(pgrep -x restic || true)
    packs=$(find {repo}/data -type f -newer /tmp/kill-marker | wc -l)
    if [ -n "$pid" ] && [ "$packs" -gt 0 ]; then
        kill -9 $pid && echo "killed restic $pid after $packs new pack(s)"
        exit 0
    fi
    sleep 0.05
done
echo "restic never ran with new packs"; exit 1
"""


def _wait_inactive(host, unit: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run(host, f"systemctl show -p ActiveState --value {unit}").stdout.strip()
        if status not in ("activating", "deactivating", "active"):
            return status
        time.sleep(0.5)
    pytest.fail(f"{unit} still running after {timeout}s")


def test_a_backup_killed_mid_way_leaves_the_repository_consistent(host, test_db):
    last_good = state(host)["last_success"]
    count_before = run(host, f"{RB} list").stdout.count(" rave ")
    # ~150 MB of random (incompressible) rows, so restic is still uploading when killed
    psql(
        host,
        "CREATE TABLE bulk AS SELECT g, (SELECT string_agg(gen_random_uuid()::text, '') "
        "FROM generate_series(1, 50) WHERE g > 0) AS noise FROM generate_series(1, 80000) g",
        db=TEST_DB,
    )
    try:
        killed = run(host, "bash -c %s", KILL_SCRIPT.replace("{repo}", REPOSITORY))
        assert "killed restic" in killed.stdout
        assert _wait_inactive(host, "rave-backup.service") == "failed"
        current = state(host)
        assert current["last_exit_code"] == 137
        assert (
            current["last_success"] == last_good
        )  # the alert keeps counting from the last good one
        metrics = host.file(METRICS).content_string
        assert "rave_backup_last_exit_code 137" in metrics
        journal = run(host, "journalctl -u rave-backup.service -n 20 --no-pager -o cat").stdout
        assert (
            "FAILED: backup failed: restic backup did not complete (killed by signal 9)" in journal
        )
        assert run(host, f"ls {REPOSITORY}/locks | wc -l").stdout.strip() != "0"  # stale lock left
    finally:
        psql(host, "DROP TABLE IF EXISTS bulk", db=TEST_DB)
    check = run(host, f"{RB} check")
    assert "no errors were found" in check.stdout
    assert "stale repository lock" in check.stderr
    assert run(host, f"ls {REPOSITORY}/locks | wc -l").stdout.strip() == "0"
    backup(host)
    assert run(host, f"{RB} list").stdout.count(" rave ") == count_before + 1
    assert "no errors were found" in run(host, f"{RB} check").stdout


def test_maintenance_forgets_prunes_and_checks(host, test_db):
    since = run(host, "date +%s").stdout.strip()
    result = start_unit(host, "rave-backup-maintenance.service")
    journal = run(
        host, f"journalctl -u rave-backup-maintenance.service --since @{since} -o cat --no-pager"
    ).stdout
    assert result.rc == 0, journal
    assert "--keep-hourly=24" in journal
    assert "no errors were found" in journal
    metrics = host.file("/var/lib/prometheus/node-exporter/rave_backup_maintenance.prom")
    assert "rave_backup_maintenance_last_exit_code 0" in metrics.content_string


def test_operator_ops_print_clear_results(host, test_db):
    now = operator_op("ops/backup_now.py")
    assert now.returncode == 0, now.stdout + now.stderr
    assert "rave-backup.service: SUCCEEDED" in now.stdout
    listing = operator_op("ops/backup_list.py")
    assert listing.returncode == 0, listing.stdout + listing.stderr
    assert "snapshot(s) of host" in listing.stdout and "latest:" in listing.stdout


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
