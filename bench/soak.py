"""Soak bench: the full stack on the SAFE-mode staging VM under steady webhook load.

    RAVE_STAGING_ID=40 .venv/bin/python -m bench.soak [--minutes 30] [--rate 200] [--backup-every 5]

The instance's VM must be up and deployed with the full deploy.py first (docs/staging.md,
"A VM"; the seed's SAFE host is 2 GB and 2 vCPUs, the VM's default size):

    .venv/bin/rave-staging vm up --fresh
    .venv/bin/pyinfra -y inventories/staging_vm.py deploy.py

For `--minutes` it sends signed GitHub deliveries through nginx's TLS port at `--rate`
requests/s (open loop: the schedule does not wait for slow answers), starts a backup
(`systemctl start rave-backup`) every `--backup-every` minutes while the timers and Prometheus'
scrapes run as deployed, and samples the host every minute. Then it waits for the spool to
drain and prints: the VM (memory, vCPUs, acceleration), each service's memory at start and end
(and its cgroup peak) against its MemoryMax, the host's available memory, OOM kills, service
restarts, the spool's size, the load's answers and latency, the rows stored, each backup,
the journal's errors and the alerts that fired. Exit 1 on an OOM kill, a restarted service,
a failed backup or an accepted delivery that was not stored. A script, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.webhook import Result, loadavg, run_load, signed_request
from rave.components import COMPONENTS
from rave.secrets import crypto
from rave.secrets.store import STAGING_IDENTITY, Environment
from rave.staging import Instance, instance_id
from rave.staging_vm import vm_host

PORT = 3002
SERVICES = [c.unit for c in COMPONENTS if not c.scheduled]
BACKUP_UNIT = next(c.unit for c in COMPONENTS if c.name == "backup")

# Run on the VM (Debian's python3): one JSON sample of what the soak watches.
PROBE = r"""
import json, re, subprocess, urllib.request
units = json.loads(UNITS)
sample = {}
meminfo = dict(l.split(":", 1) for l in open("/proc/meminfo"))
sample["mem_total_mb"] = int(meminfo["MemTotal"].split()[0]) // 1024
sample["mem_available_mb"] = int(meminfo["MemAvailable"].split()[0]) // 1024
vmstat = dict(l.split() for l in open("/proc/vmstat"))
sample["oom_kill"] = int(vmstat.get("oom_kill", 0))
sample["cpus"] = len(re.findall(r"^processor", open("/proc/cpuinfo").read(), re.M))
sample["loadavg"] = open("/proc/loadavg").read().split()[:3]
services = {}
for unit in units:
    shown = subprocess.run(
        ["systemctl", "show", unit + ".service", "-p", "LoadState", "-p", "ActiveState",
         "-p", "ControlGroup", "-p", "MemoryCurrent", "-p", "MemoryMax", "-p", "NRestarts"],
        capture_output=True, text=True).stdout
    props = dict(l.split("=", 1) for l in shown.splitlines() if "=" in l)
    if props.get("LoadState") != "loaded":
        continue
    peak = None
    if props.get("ControlGroup"):
        try:
            peak = int(open("/sys/fs/cgroup" + props["ControlGroup"] + "/memory.peak").read())
        except (OSError, ValueError):
            pass
    def number(v):
        return int(v) if v and v.isdigit() else None
    services[unit] = {
        "active": props.get("ActiveState"), "current": number(props.get("MemoryCurrent")),
        "max": number(props.get("MemoryMax")), "peak": peak,
        "restarts": number(props.get("NRestarts")) or 0,
    }
sample["services"] = services
try:
    text = urllib.request.urlopen("http://127.0.0.1:8001/metrics", timeout=10).read().decode()
    for name in ("rave_webhook_spool_bytes", "rave_webhook_spool_depth"):
        m = re.search("^" + name + r"(?:\{[^}]*\})? (\S+)$", text, re.M)
        sample[name] = float(m.group(1)) if m else None
except OSError as error:
    sample["webhook_metrics_error"] = str(error)
print(json.dumps(sample))
"""


class Vm:
    """The instance's staging VM (or, with `container`, a container host: it shares the control
    machine's memory, so its figures say nothing about a 2 GB host), reached with the harness's
    ssh files."""

    def __init__(self, container: int | None = None) -> None:
        instance = Instance(instance_id())
        self.instance = instance
        if container is not None:
            entries = json.loads(instance.hosts_json.read_text())
            name = f"rave-staging-{container}"
            (entry,) = [e for e in entries if e["name"] == name]
            self.name, self.address, self.accel = name, entry["address"], "container"
            return
        vm = vm_host(instance)
        if not vm.json_file.exists():
            sys.exit(f"no staging VM ({vm.json_file} is missing): rave-staging vm up first")
        entry = json.loads(vm.json_file.read_text())[0]
        self.name, self.address, self.accel = entry["name"], entry["address"], entry["accel"]

    def run(self, command: str, timeout: float = 600, check: bool = True) -> str:
        result = subprocess.run(
            [
                "ssh",
                "-F",
                str(self.instance.ssh_config),
                self.name,
                f"sudo sh -c {shlex.quote(command)}",
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"`{command[:60]}` failed ({result.returncode}): {result.stderr}")
        return result.stdout

    def sample(self) -> dict[str, Any]:
        script = f"UNITS = {json.dumps(json.dumps(SERVICES))}\n{PROBE}"
        out = self.run(f"python3 -c {shlex.quote(script)}", timeout=120)
        sample: dict[str, Any] = json.loads(out)
        sample["at"] = time.time()
        return sample

    def psql(self, sql: str, db: str = "rave_webhook") -> str:
        return self.run(
            f"runuser -u postgres -- psql -X -q -At -d {db} -c {shlex.quote(sql)}"
        ).strip()

    def hmac_secret(self) -> bytes:
        state = Path(self.instance.state)
        identities = crypto.load_identities(state / STAGING_IDENTITY)
        values = Environment.named("staging", state / "secrets").decrypt(identities)
        return values.webhook_hmac_secrets[0].encode()


def deliveries(host: str, secret: bytes, run: str) -> Iterator[tuple[str, bytes]]:
    """Signed deliveries, made as they are sent (30 minutes at 200/s would not fit prepared)."""
    n = 0
    while True:
        yield signed_request(host, secret, n, run)
        n += 1


class Backups(threading.Thread):
    """`systemctl start rave-backup` every `every` seconds (a oneshot: returns when done)."""

    def __init__(self, vm: Vm, every: float, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.vm, self.every, self.stop = vm, every, stop
        self.runs: list[dict[str, Any]] = []

    def run(self) -> None:
        started = time.monotonic()
        while not self.stop.is_set():
            began = time.monotonic()
            out = self.vm.run(
                f"systemctl start {BACKUP_UNIT}.service; echo rc=$?; "
                f"systemctl show {BACKUP_UNIT}.service -p Result --value",
                timeout=3600,
                check=False,
            )
            self.runs.append(
                {
                    "at_min": (began - started) / 60,
                    "seconds": time.monotonic() - began,
                    "ok": "rc=0" in out and out.strip().endswith("success"),
                    "detail": " ".join(out.split()),
                }
            )
            self.stop.wait(max(0.0, self.every - (time.monotonic() - began)))


class Sampler(threading.Thread):
    def __init__(self, vm: Vm, every: float, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.vm, self.every, self.stop = vm, every, stop
        self.samples: list[dict[str, Any]] = []
        self.failures = 0

    def run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                self.samples.append(self.vm.sample())
            except (RuntimeError, subprocess.TimeoutExpired, ValueError):
                self.failures += 1  # an unanswered sample is itself a finding


def mb(value: int | None) -> str:
    return "-" if value is None else f"{value / 1048576:.0f}M"


def alerts_fired(vm: Vm, seconds: int | None) -> dict[str, str]:
    """Alerts firing at any time in the last `seconds` (None: firing now)."""
    query = 'ALERTS{alertstate="firing"}'
    if seconds is not None:
        query = f"max_over_time({query}[{max(seconds, 60)}s])"
    out = vm.run(
        "curl -fsS --get http://127.0.0.1:9090/api/v1/query "
        f"--data-urlencode {shlex.quote('query=' + query)}",
        check=False,
    )
    try:
        result = json.loads(out)["data"]["result"]
    except (ValueError, KeyError):
        return {"(prometheus unreachable)": out[:200]}
    return {r["metric"]["alertname"]: r["metric"].get("severity", "") for r in result}


def journal_errors(vm: Vm, since: str) -> Counter[str]:
    out = vm.run(
        f"journalctl --since {shlex.quote(since)} -p err -o json --no-pager "
        "--output-fields=_SYSTEMD_UNIT,SYSLOG_IDENTIFIER",
        check=False,
    )
    counts: Counter[str] = Counter()
    for line in out.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        counts[entry.get("_SYSTEMD_UNIT") or entry.get("SYSLOG_IDENTIFIER") or "?"] += 1
    return counts


def report_services(start: dict[str, Any], end: dict[str, Any]) -> list[str]:
    lines = [f"{'service':34s} {'start':>7s} {'end':>7s} {'peak':>7s} {'max':>7s}  restarts"]
    for unit in SERVICES:
        first, last = start["services"].get(unit), end["services"].get(unit)
        if first is None and last is None:
            continue  # not deployed on this host (e.g. Grafana in staging)
        first, last = first or {}, last or {}
        restarts = last.get("restarts", 0) - first.get("restarts", 0)
        lines.append(
            f"{unit:34s} {mb(first.get('current')):>7s} {mb(last.get('current')):>7s} "
            f"{mb(last.get('peak')):>7s} {mb(last.get('max')):>7s}  {restarts}"
            + ("" if last.get("active") == "active" else f"  ({last.get('active')} at the end)")
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=200.0, help="webhook requests per second")
    parser.add_argument("--backup-every", type=float, default=5.0, help="minutes")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--sample-every", type=float, default=60.0, help="seconds")
    parser.add_argument("--drain-seconds", type=float, default=600.0)
    parser.add_argument(
        "--container",
        type=int,
        metavar="K",
        help="soak container host K instead of the VM (checks the bench; not a SAFE-host figure)",
    )
    args = parser.parse_args(argv)

    vm = Vm(args.container)
    print(f"soak: {vm.name} ({vm.address}, {vm.accel}); control machine load {loadavg()}")
    mode = vm.run("cat /etc/rave/release.json 2>/dev/null || true", check=False)
    start = vm.sample()
    print(
        f"VM: {start['mem_total_mb']} MB memory, {start['cpus']} vCPUs; "
        f"plan: {args.minutes:g} min at {args.rate:g}/s, a backup every {args.backup_every:g} "
        f"min{'; release ' + json.loads(mode).get('commit', '?')[:12] if mode.strip() else ''}"
    )
    since = vm.run("date -u '+%Y-%m-%d %H:%M:%S'").strip()
    rows_before = int(vm.psql("SELECT count(*) FROM webhook_events"))
    firing_before = alerts_fired(vm, None)
    run = f"soak-{int(time.time())}"

    stop = threading.Event()
    sampler = Sampler(vm, args.sample_every, stop)
    backups = Backups(vm, args.backup_every * 60, stop)
    sampler.start()
    backups.start()
    began = time.monotonic()
    target = f"{vm.address}:{PORT}"
    load: Result = asyncio.run(
        run_load(
            vm.address,
            PORT,
            deliveries(target, vm.hmac_secret(), run),
            concurrency=args.concurrency,
            seconds=args.minutes * 60,
            rate=args.rate,
            stop_at_deadline=True,
        )
    )
    loaded = time.monotonic() - began
    stop.set()
    backups.join(timeout=3600)
    sampler.join(timeout=300)

    drained_in = None
    drain_start = time.monotonic()
    while time.monotonic() - drain_start < args.drain_seconds:
        depth = vm.sample().get("rave_webhook_spool_depth")
        if depth == 0:
            drained_in = time.monotonic() - drain_start
            break
        time.sleep(5)
    end = vm.sample()
    rows = int(vm.psql(f"SELECT count(*) FROM webhook_events WHERE payload->>'run' = '{run}'"))
    total_rows = int(vm.psql("SELECT count(*) FROM webhook_events"))
    elapsed = int(time.monotonic() - began)
    fired = alerts_fired(vm, elapsed)
    errors = journal_errors(vm, since)
    kernel_oom = vm.run(
        f"journalctl -k --since {shlex.quote(since)} --no-pager | "
        "grep -ci 'out of memory\\|oom-kill' || true",
        check=False,
    ).strip()

    samples = [start, *sampler.samples, end]
    statuses = Counter(load.statuses)
    accepted = statuses.get(202, 0)
    print(f"\nran {loaded / 60:.1f} min of load ({elapsed / 60:.1f} min in all)")
    print("\n".join(report_services(start, end)))
    available = [s["mem_available_mb"] for s in samples]
    print(
        f"host available memory: start {available[0]} MB, end {available[-1]} MB, "
        f"lowest {min(available)} MB (of {start['mem_total_mb']} MB)"
    )
    oom = end["oom_kill"] - start["oom_kill"]
    print(f"OOM kills: {oom} (kernel log lines: {kernel_oom or 0})")
    drain_text = "NOT within the wait" if drained_in is None else f"in {drained_in:.0f} s"
    spool = [s.get("rave_webhook_spool_bytes") for s in samples]
    depth = [s.get("rave_webhook_spool_depth") for s in samples]
    known = [v for v in spool if v is not None]
    print(
        f"spool: {spool[0]} B at start, {max(known) if known else '-'} B at most, "
        f"{spool[-1]} B at the end (depth most {max(d for d in depth if d is not None)}; "
        f"drained {drain_text})"
    )
    print(
        f"webhook load: {len(load.statuses) + load.errors} sent, {load.unsent} scheduled but "
        f"unsent at the end (the VM fell behind), {load.rate():.1f} 2xx/s achieved "
        f"of {args.rate:g}/s, statuses {dict(sorted(statuses.items()))}, "
        f"{load.errors} connection errors/timeouts, p50 {load.percentile(50) * 1000:.0f} ms, "
        f"p99 {load.percentile(99) * 1000:.0f} ms"
    )
    print(
        f"stored: {rows} rows of this run for {accepted} accepted (202); "
        f"table {rows_before} -> {total_rows}"
    )
    for backup in backups.runs:
        print(
            f"backup at {backup['at_min']:.1f} min: {backup['seconds']:.0f} s, "
            f"{'ok' if backup['ok'] else 'FAILED'} ({backup['detail']})"
        )
    print(
        "journal errors (priority err and worse): "
        + (", ".join(f"{unit} {n}" for unit, n in errors.most_common()) or "none")
    )
    print(
        "alerts firing at the start: "
        + (", ".join(f"{a} ({s})" for a, s in sorted(firing_before.items())) or "none")
    )
    print(
        "alerts firing during the soak: "
        + (", ".join(f"{a} ({s})" for a, s in sorted(fired.items())) or "none")
    )
    print(f"samples: {len(sampler.samples)} taken, {sampler.failures} unanswered")
    print(f"control machine load after: {loadavg()}")

    restarted = [
        unit
        for unit in SERVICES
        if end["services"].get(unit, {}).get("restarts", 0)
        > start["services"].get(unit, {}).get("restarts", 0)
    ]
    failed = [b for b in backups.runs if not b["ok"]]
    problems = []
    if oom:
        problems.append(f"{oom} OOM kills")
    if restarted:
        problems.append("restarted: " + ", ".join(restarted))
    if failed:
        problems.append(f"{len(failed)} failed backups")
    if rows < accepted:
        problems.append(f"{accepted - rows} accepted deliveries not stored")
    print("RESULT: " + ("; ".join(problems) if problems else "no OOM kill, restart or loss"))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
