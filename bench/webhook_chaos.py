"""Chaos run of the webhook data path on a staging host: no acknowledged delivery lost or doubled.

    RAVE_STAGING_ID=4 .venv/bin/python -m bench.webhook_chaos [--seconds 50] [--rate 50]

Signed GitHub deliveries, each with its own X-GitHub-Delivery (`chaos-<run>-<n>`) and its own
body (`"run"`, `"n"`), go through nginx TLS on port 3002 at a fixed rate (open loop, from the
control machine) while, in order with pauses: PostgreSQL is stopped for 8 s and started again,
the receiver is killed with SIGKILL (systemd restarts it; started by hand if it does not), and
nginx is restarted. Every delivery's answer is recorded (its status, or 0 for a connection
error). After the load it waits, bounded, until the spool has drained, then reads the rows of
this run from webhook_events and prints: sent, answered 2xx, answered otherwise (by status),
connection errors, stored, lost (answered 2xx, no row) and duplicated (a delivery id or a body
stored more than once). The services are started again whatever happens. Exit status 1 when a
delivery is lost or duplicated. tests/host/test_webhook_chaos.py runs the same core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shlex
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.webhook import Result, run_load, staging_target, webhook_requests

POSTGRES = "postgresql@15-main"
RECEIVER = "rave-webhook"
EDGE = "nginx"
SERVICES = (POSTGRES, RECEIVER, EDGE)
HEALTH = "curl -sf http://127.0.0.1:8001/healthz"

# a command as root on the host -> its stdout; raises when the command fails
Shell = Callable[[str], str]
# a query on the rave_webhook database as the postgres superuser -> psql -At output
Sql = Callable[[str], str]


@dataclass
class Tally:
    """What was sent and answered, and what PostgreSQL holds for this run."""

    deliveries: list[tuple[str, int]]  # (delivery id, status; 0: connection error)
    rows: list[tuple[str, str]]  # (delivery id, body "n") of the stored rows
    events: list[str] = field(default_factory=list)  # the disturbances, timed
    receiver_pids: tuple[str, str] = ("", "")  # MainPID before and after the SIGKILL
    spooled_during_outage: int = -1  # the receiver's spool depth before PostgreSQL returned

    @property
    def sent(self) -> int:
        return len(self.deliveries)

    @property
    def accepted(self) -> set[str]:
        return {d for d, status in self.deliveries if 200 <= status < 300}

    @property
    def refused(self) -> Counter[int]:
        return Counter(s for _, s in self.deliveries if s and not 200 <= s < 300)

    @property
    def errors(self) -> int:
        return sum(1 for _, status in self.deliveries if status == 0)

    @property
    def stored(self) -> Counter[str]:
        return Counter(delivery for delivery, _ in self.rows)

    @property
    def lost(self) -> set[str]:
        return self.accepted - set(self.stored)

    @property
    def duplicated(self) -> set[str]:
        """Delivery ids stored more than once, and bodies stored under more than one row."""
        ids = {d for d, count in self.stored.items() if count > 1}
        bodies = Counter(n for _, n in self.rows)
        return ids | {f"body n={n}" for n, count in bodies.items() if count > 1}

    @property
    def unknown(self) -> set[str]:
        """Stored ids of this run that were never sent (cannot happen; checked all the same)."""
        return set(self.stored) - {d for d, _ in self.deliveries}

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.unknown)

    def lines(self) -> list[str]:
        refused = ", ".join(f"{s}: {n}" for s, n in sorted(self.refused.items())) or "-"
        unacknowledged = len(set(self.stored) - self.accepted)
        figures = [
            ("sent", f"{self.sent}"),
            ("answered 2xx", f"{len(self.accepted)}"),
            ("answered non-2xx", f"{sum(self.refused.values())}  ({refused})"),
            ("connection errors", f"{self.errors}"),
            (
                "stored",
                f"{len(self.rows)} rows, {len(self.stored)} deliveries "
                f"(not answered 2xx: {unacknowledged})",
            ),
            ("lost (2xx, no row)", f"{len(self.lost)}"),
            ("duplicated", f"{len(self.duplicated)}"),
        ]
        if self.unknown:
            figures.append(("stored, never sent", f"{len(self.unknown)}"))
        return [f"{label:22s} {value}" for label, value in figures]

    def problems(self) -> str:
        """The first few offending delivery ids, for an assertion message."""
        parts = []
        for label, ids in (
            ("lost", self.lost),
            ("duplicated", self.duplicated),
            ("unknown", self.unknown),
        ):
            if ids:
                parts.append(f"{label}: {sorted(ids)[:10]}")
        return "; ".join(parts)


def spool_records(shell: Shell) -> int | None:
    """The receiver's undrained spool records, None while it does not answer."""
    try:
        return int(json.loads(shell(HEALTH))["spool_records"])
    except Exception:  # down or restarting: not drained
        return None


def main_pid(shell: Shell) -> str:
    return shell(f"systemctl show -p MainPID --value {RECEIVER}").strip()


def _active(shell: Shell, unit: str) -> bool:
    try:
        return shell(f"systemctl is-active {unit}").strip() == "active"
    except Exception:  # is-active exits 3 when inactive
        return False


def disturb(shell: Shell, tally: Tally, log: Callable[[str], None], pause: float = 7.0) -> None:
    """PostgreSQL down for 8 s, the receiver SIGKILLed, nginx restarted: in order, paused."""
    started = time.monotonic()

    def note(text: str) -> None:
        line = f"t={time.monotonic() - started:5.1f}s  {text}"
        tally.events.append(line)
        log(line)

    time.sleep(pause)
    shell(f"systemctl stop {POSTGRES}")
    note(f"stopped {POSTGRES}")
    time.sleep(8)
    tally.spooled_during_outage = spool_records(shell) or 0
    shell(f"systemctl start {POSTGRES}")
    note(f"started {POSTGRES} (spool held {tally.spooled_during_outage} records)")
    time.sleep(pause)
    before = main_pid(shell)
    try:
        shell(f"systemctl kill -s SIGKILL {RECEIVER}")
        note(f"SIGKILL to {RECEIVER} (pid {before})")
    except Exception as error:
        # in a staging container systemd cannot walk the unit's cgroup (EIO) and says so after
        # killing the main process; whether the receiver was replaced is checked below
        said = re.search(r"Failed to [^\\\n']*", str(error))
        note(f"SIGKILL to {RECEIVER} (pid {before}); systemctl: {said[0] if said else error}")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        after = main_pid(shell)
        if after not in ("0", "", before) and _active(shell, RECEIVER):
            break
        time.sleep(0.25)
    else:
        shell(f"systemctl start {RECEIVER}")
        note(f"{RECEIVER} not restarted by systemd: started it")
    tally.receiver_pids = (before, main_pid(shell))
    note(f"{RECEIVER} running again (pid {tally.receiver_pids[1]})")
    time.sleep(pause)
    shell(f"systemctl restart {EDGE}")
    note(f"restarted {EDGE}")


def restore(shell: Shell, log: Callable[[str], None]) -> None:
    """Start whatever is not running (each on its own: one failing does not skip the rest)."""
    for unit in SERVICES:
        try:
            shell(f"systemctl start {unit}")
        except Exception as error:  # report, go on with the others
            log(f"could not start {unit}: {error}")


def stored_rows(sql: Sql, prefix: str) -> list[tuple[str, str]]:
    out = sql(
        "SELECT delivery_id, payload->>'n' FROM webhook_events "
        f"WHERE provider = 'github' AND delivery_id LIKE '{prefix}%'"
    )
    return [(d, n) for d, n in (line.split("|", 1) for line in out.splitlines() if line)]


def wait_for_rows(
    shell: Shell, sql: Sql, prefix: str, accepted: set[str], timeout: float = 120.0
) -> list[tuple[str, str]]:
    """The run's rows once the spool is drained and every 2xx delivery is stored; else once
    the rows stop growing for 30 s, or after `timeout` (what is missing then is lost)."""
    deadline = time.monotonic() + timeout
    count, changed = -1, time.monotonic()
    while True:
        rows = stored_rows(sql, prefix)
        drained = spool_records(shell) == 0
        if drained and accepted <= {d for d, _ in rows}:
            time.sleep(1)
            return stored_rows(sql, prefix)  # the unacknowledged stragglers too
        if len(rows) != count:
            count, changed = len(rows), time.monotonic()
        now = time.monotonic()
        if now > deadline or (drained and now - changed > 30):
            return rows
        time.sleep(1)


def run_chaos(
    address: str,
    port: int,
    secret: bytes,
    shell: Shell,
    sql: Sql,
    *,
    seconds: float = 50.0,
    rate: float = 50.0,
    concurrency: int = 16,
    log: Callable[[str], None] = print,
) -> Tally:
    """Load through nginx while `disturb` runs; then the rows of the run (see the module)."""
    if seconds < 40:
        raise ValueError("the disturbances take about 35 s: --seconds 40 or more")
    run = uuid.uuid4().hex
    prefix = f"chaos-{run}-"
    requests = webhook_requests(f"{address}:{port}", secret, int(seconds * rate) + 10, run, prefix)
    outcome: dict[str, Result | BaseException] = {}

    def load() -> None:
        try:
            outcome["result"] = asyncio.run(
                run_load(
                    address, port, requests, concurrency=concurrency, seconds=seconds, rate=rate
                )
            )
        except BaseException as error:  # re-raised in the caller's thread
            outcome["error"] = error

    tally = Tally([], [])
    log(f"chaos run {run}: {rate:.0f}/s for {seconds:.0f}s through https://{address}:{port}")
    worker = threading.Thread(target=load, name="webhook-load", daemon=True)
    worker.start()
    try:
        disturb(shell, tally, log)
    finally:
        restore(shell, log)
        worker.join(timeout=seconds + 120)
    failure = outcome.get("error")
    if isinstance(failure, BaseException):
        raise failure
    result = outcome.get("result")
    if not isinstance(result, Result):
        raise RuntimeError(f"the load did not finish within {seconds + 120:.0f}s")
    tally.deliveries = result.deliveries
    tally.rows = wait_for_rows(shell, sql, prefix, tally.accepted)
    return tally


def ssh_shell(name: str) -> Shell:
    """Root commands on a staging host over the harness's ssh_config (sudo)."""
    from rave.staging import Instance, instance_id

    config = str(Instance(instance_id()).ssh_config)

    def shell(command: str) -> str:
        done = subprocess.run(
            ["ssh", "-F", config, name, f"sudo sh -c {shlex.quote(command)}"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{name}: `{command}` failed ({done.returncode}): {done.stderr}")
        return done.stdout

    return shell


def psql(shell: Shell) -> Sql:
    def sql(query: str) -> str:
        return shell(
            "cd / && runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d rave_webhook "
            f"-c {shlex.quote(query)}"
        )

    return sql


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--seconds", type=float, default=50.0)
    parser.add_argument("--rate", type=float, default=50.0, help="deliveries per second")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--port", type=int, default=3002)
    args = parser.parse_args(argv)
    from rave.staging import Instance, instance_id

    address, secrets = staging_target()
    name = json.loads(Instance(instance_id()).hosts_json.read_text())[0]["name"]
    shell = ssh_shell(name)
    tally = run_chaos(
        address,
        args.port,
        secrets[0],
        shell,
        psql(shell),
        seconds=args.seconds,
        rate=args.rate,
        concurrency=args.concurrency,
    )
    for line in tally.lines():
        print(line)
    if not tally.ok:
        print(tally.problems())
    return 0 if tally.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
