"""Benchmark: time and size of a backup and of a restore for ~1 GB of webhook events.

Runs against a deployed staging host (RAVE_STAGING_ID selects the instance):

    RAVE_STAGING_ID=6 .venv/bin/python bench/backup.py [--rows 1000000] [--host rave-staging-1]

It creates the database rave_bench (an events table shaped like the webhook's: ~1 KB of JSON
per event, generated on the host with generate_series), then measures through the real units
and the host script: a first backup (pgBackRest full + restic), a second backup with nothing
changed (pgBackRest differential, restic deduplication), the verify (restic and pgBackRest
checks, restore into a scratch database and compare), a database restore from the dumps, a
cluster restore from pgBackRest (to a point in time: backup plus WAL replay), and the recovery
point after a host loss: how long after a write its WAL is in the pgBackRest repository
(archive_timeout, no switch forced). It prints the figures and drops rave_bench (unless --keep).
A script, not a test.

`--wal-lag SECONDS` measures only the WAL push lag under load instead: it runs
bench/webhook_chaos.py for SECONDS (at --chaos-rate deliveries/s) and samples pg_stat_archiver
about once a second meanwhile: the lag rave_wal_archive_lag_seconds reports (seconds since the
last pushed segment), the segments waiting (.ready), and each segment's push delay (from the
first sample that shows it complete to the first that shows it archived; about 1 s resolution).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rave.staging import Instance, instance_id

PGBACKREST = "runuser -u postgres -- /usr/local/sbin/rave-pgbackrest"

RB = "/usr/local/sbin/rave-backup"
DB = "rave_bench"

SCHEMA = """
CREATE TABLE events (
    id bigserial PRIMARY KEY,
    delivery_id uuid NOT NULL,
    received_at timestamptz NOT NULL,
    event text NOT NULL,
    headers jsonb NOT NULL,
    payload jsonb NOT NULL
)
"""

FILL = """
INSERT INTO events (delivery_id, received_at, event, headers, payload)
SELECT gen_random_uuid(), now() - g * interval '1 second',
       (ARRAY['push', 'issue', 'release', 'ping'])[1 + g % 4],
       jsonb_build_object('user-agent', 'bench/1.0', 'content-type', 'application/json'),
       jsonb_build_object('sequence', g, 'repository', 'org/repo-' || (g % 97),
                          'body', (SELECT string_agg(md5(g::text || i::text), '')
                                   FROM generate_series(1, {chunks}) i))
FROM generate_series({start}, {end}) g
"""


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class Host:
    def __init__(self, name: str):
        self.name = name
        self.ssh_config = str(Instance(instance_id()).ssh_config)

    def run(self, command: str, timeout: float = 3600) -> str:
        result = subprocess.run(
            ["ssh", "-F", self.ssh_config, self.name, f"sudo sh -c {shlex.quote(command)}"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            sys.exit(f"{self.name}: `{command}` failed ({result.returncode}):\n{result.stderr}")
        return result.stdout

    def psql(self, sql: str, db: str = "postgres") -> str:
        return self.run(
            f"runuser -u postgres -- psql -X -q -At -v ON_ERROR_STOP=1 -d {db} "
            f"-c {shlex.quote(sql)}"
        )

    def timed(self, command: str) -> tuple[float, str]:
        started = time.monotonic()
        out = self.run(command)
        return time.monotonic() - started, out


def pgbackrest_figures(host: Host) -> list[tuple[str, str]]:
    """The recovery point after a host loss, and a cluster restore from pgBackRest."""
    timeout = float(host.psql("SELECT setting FROM pg_settings WHERE name = 'archive_timeout'"))
    host.psql(
        "CREATE TABLE IF NOT EXISTS rpo_probe (at timestamptz); INSERT INTO rpo_probe "
        "VALUES (now())",
        db=DB,
    )
    written = time.monotonic()
    # the restore target: just after the write, so inside the WAL waited for below (a later
    # target is past the last pushed segment and PostgreSQL refuses it: "recovery ended before
    # configured recovery target was reached")
    now = host.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
    ).strip()
    # and a commit after the target, so the pushed WAL reaches past it
    host.psql("INSERT INTO rpo_probe VALUES (now())", db=DB)
    segment = host.psql("SELECT pg_walfile_name(pg_current_wal_lsn())").strip()
    while True:
        info = json.loads(host.run(f"{PGBACKREST} info --output=json"))[0]
        pushed = max((a.get("max") or "" for a in info.get("archive") or []), default="")
        if pushed >= segment:
            break
        if time.monotonic() - written > timeout + 120:
            sys.exit("the WAL of a write was not pushed within archive_timeout + 120 s")
        time.sleep(1)
    rpo = time.monotonic() - written
    seconds, out = host.timed(f"{RB} restore --target-time {now} --yes")
    assert "RESTORED" in out, out
    return [
        (
            "recovery point after a host loss (write -> its WAL in the pgBackRest repository)",
            f"{rpo:.1f} s (archive_timeout {timeout:.0f} s; before pgBackRest: the backup "
            "interval, 1 h by default)",
        ),
        (
            "restore of the cluster from pgBackRest (point in time: backup + WAL)",
            f"{seconds:.1f} s",
        ),
    ]


ARCHIVER_SAMPLE = (
    "SELECT pg_walfile_name(pg_current_wal_lsn()), coalesce(last_archived_wal, ''), "
    "coalesce(extract(epoch FROM now() - last_archived_time), -1), failed_count, "
    "(SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') "
    "FROM pg_stat_archiver"
)


def wal_lag_figures(host: Host, seconds: float, rate: float) -> list[tuple[str, str]]:
    """WAL push lag while bench/webhook_chaos.py loads (and disturbs) the host."""
    chaos = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.webhook_chaos",
            "--seconds",
            str(seconds),
            "--rate",
            str(rate),
        ],
        cwd=Path(__file__).resolve().parent.parent,
    )
    metric_lags: list[float] = []
    ready_counts: list[int] = []
    completed_at: dict[str, float] = {}  # segment -> the first sample that shows it complete
    push_delays: dict[str, float] = {}
    failed_first = failed_last = -1
    previous = ""
    while chaos.poll() is None:
        # PostgreSQL is stopped for a few seconds by the chaos run: skip those samples
        probe = subprocess.run(
            [
                "ssh",
                "-F",
                host.ssh_config,
                host.name,
                "sudo runuser -u postgres -- psql -X -q -At -F '|' -d postgres -c "
                + shlex.quote(ARCHIVER_SAMPLE),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        sampled = time.monotonic()
        if probe.returncode == 0 and probe.stdout.strip():
            current, archived, lag, failed, ready = probe.stdout.strip().split("|")
            failed_last = int(failed)
            failed_first = failed_last if failed_first < 0 else failed_first
            if float(lag) >= 0:
                metric_lags.append(float(lag))
            ready_counts.append(int(ready))
            # the segment written at the previous sample is complete once another one is
            if previous and current != previous:
                completed_at.setdefault(previous, sampled)
            previous = current
            for segment, since in completed_at.items():
                if segment <= archived and segment not in push_delays:
                    push_delays[segment] = sampled - since
        time.sleep(1)
    delays = sorted(push_delays.values())
    figures = [
        ("WAL lag: load", f"webhook_chaos {seconds:.0f} s at {rate:g}/s (exit {chaos.returncode})"),
        ("WAL lag: samples", f"{len(metric_lags)}"),
        (
            "WAL lag: rave_wal_archive_lag_seconds (since last push) median / max",
            f"{statistics.median(metric_lags):.1f} / {max(metric_lags):.1f} s"
            if metric_lags
            else "no sample",
        ),
        ("WAL lag: segments waiting (.ready) max", f"{max(ready_counts, default=-1)}"),
        ("WAL lag: failed archive-push during the load", f"{failed_last - failed_first}"),
        (
            "WAL lag: segments pushed; push delay median / max",
            f"{len(delays)}; {statistics.median(delays):.1f} / {max(delays):.1f} s"
            if delays
            else "0 segments completed",
        ),
    ]
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="rave-staging-1")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunks", type=int, default=28, help="32-char pieces per payload body")
    parser.add_argument("--keep", action="store_true", help="keep the rave_bench database")
    parser.add_argument(
        "--wal-lag",
        type=float,
        metavar="SECONDS",
        help="only measure the WAL push lag during a webhook_chaos run of SECONDS",
    )
    parser.add_argument("--chaos-rate", type=float, default=50.0, help="deliveries/s for --wal-lag")
    args = parser.parse_args()
    host = Host(args.host)
    if args.wal_lag:
        print_figures(args.host, wal_lag_figures(host, args.wal_lag, args.chaos_rate))
        return 0
    config = json.loads(host.run("cat /etc/rave/backup.json"))
    repo = config["repository"]
    pgbackrest_repo = config["pgbackrest"]["repo_path"] if config.get("wal_archiving") else None

    print(f"generating {args.rows} events in {DB} on {args.host} ...", flush=True)
    host.psql(f"DROP DATABASE IF EXISTS {DB}")
    host.psql(f"CREATE DATABASE {DB}")
    host.psql(SCHEMA, db=DB)
    started = time.monotonic()
    step = 100_000
    for start in range(1, args.rows + 1, step):
        end = min(start + step - 1, args.rows)
        host.psql(FILL.format(start=start, end=end, chunks=args.chunks), db=DB)
    host.psql("VACUUM ANALYZE events", db=DB)
    generated = time.monotonic() - started
    db_bytes = int(host.psql(f"SELECT pg_database_size('{DB}')").strip())
    repo_before = int(host.run(f"du -sb {repo} | cut -f1").split()[0])
    pgbackrest_before = (
        int(host.run(f"du -sb {pgbackrest_repo} | cut -f1").split()[0]) if pgbackrest_repo else 0
    )
    figures: list[tuple[str, str]] = [
        ("events", f"{args.rows}"),
        ("database size", human(db_bytes)),
        ("generation", f"{generated:.1f} s"),
    ]
    try:
        for label in ("backup (first, full)", "backup (again, unchanged)"):
            seconds, _ = host.timed("systemctl start rave-backup.service")
            state = json.loads(host.run("cat /var/lib/rave-backup/state.json"))
            dump = json.loads(host.run("cat /var/lib/rave-backup/dump/manifest.json"))
            figures += [
                (f"{label}: time", f"{seconds:.1f} s"),
                (f"{label}: dump of {DB}", human(dump["databases"][DB]["bytes"])),
                (f"{label}: dump time", f"{dump['databases'][DB]['seconds']:.1f} s"),
                (f"{label}: covered", human(state["last_size"])),
                (f"{label}: added to repository", human(state["last_added"])),
            ]
            if pgbackrest_repo:
                info = json.loads(host.run(f"{PGBACKREST} info --output=json"))[0]
                newest = info["backup"][-1]
                stamp = newest["timestamp"]
                figures += [
                    (
                        f"{label}: pgBackRest {newest['type']} backup time",
                        f"{stamp['stop'] - stamp['start']:.1f} s",
                    ),
                    (
                        f"{label}: pgBackRest into repository",
                        human(newest["info"]["repository"]["delta"]),
                    ),
                ]
        repo_after = int(host.run(f"du -sb {repo} | cut -f1").split()[0])
        figures.append(("restic repository growth", human(repo_after - repo_before)))
        if pgbackrest_repo:
            grown = int(host.run(f"du -sb {pgbackrest_repo} | cut -f1").split()[0])
            figures.append(("pgBackRest repository growth", human(grown - pgbackrest_before)))
        seconds, out = host.timed(f"{RB} verify")
        assert "VERIFIED" in out, out
        figures.append(
            ("verify (restic check + restore into scratch DB + compare)", f"{seconds:.1f} s")
        )
        seconds, out = host.timed(f"{RB} restore --scope database --yes")
        assert "RESTORED" in out, out
        figures.append(("restore (all databases, checksums compared)", f"{seconds:.1f} s"))
        rate = db_bytes / max(seconds, 0.001)
        figures.append(("restore rate", f"{human(rate)}/s"))
        if pgbackrest_repo:
            figures += pgbackrest_figures(host)
    finally:
        if not args.keep:
            host.psql(f"DROP DATABASE IF EXISTS {DB}")
    print_figures(f"{args.host} ({repo})", figures)
    return 0


def print_figures(where: str, figures: list[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in figures)
    print(f"\nbackup benchmark on {where}:")
    for label, value in figures:
        print(f"  {label:<{width}}  {value}")


if __name__ == "__main__":
    sys.exit(main())
