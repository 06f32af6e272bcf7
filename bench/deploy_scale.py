"""Parallel at scale: a no-change run over N staging hosts against one over 1, and a failing host.

    RAVE_STAGING_ID=<n> .venv/bin/python bench/deploy_scale.py [--hosts 10] [--repeat 2]

1. boots N fresh staging hosts and deploys deploy.py to all of them (timed, once);
2. no-change runs over all N and over 1 (`--limit rave-staging-1`), alternated --repeat times;
   prints each, the best of each and the ratio (issue 9: at most 1.5);
3. stops sshd on the last host and runs over all N: prints how pyinfra reports that host and
   checks that every other host finished with zero changes and no error;
4. reboots the broken host (sshd comes back) and runs over all N again: zero changes anywhere,
   i.e. the failed run left nothing half-done on the others.

Heavy (N full deploys in parallel): run it once, on a quiet machine if possible.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rave.deployrun import DeployResult, run_deploy  # noqa: E402
from rave.staging import Instance, instance_id  # noqa: E402

LIMIT_RATIO = 1.5


def staging(*args: str) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "rave.staging", *args], cwd=REPO, check=True)
    return time.monotonic() - started


def ssh(name: str, command: str) -> subprocess.CompletedProcess[str]:
    inst = Instance(instance_id())
    return subprocess.run(
        ["ssh", "-F", str(inst.ssh_config), name, command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def machine_cpu_seconds() -> float:
    """CPU time used by everything on this machine (all cores), from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measured(run: Callable[[], DeployResult], what: str) -> tuple[float, float, float]:
    """(wall s, pyinfra CPU s, machine CPU s) of a no-change run."""
    machine, children = machine_cpu_seconds(), children_cpu_seconds()
    result = must(run(), what)
    return (
        result.seconds,
        children_cpu_seconds() - children,
        machine_cpu_seconds() - machine,
    )


def must(result: DeployResult, what: str, changes_allowed: bool = False) -> DeployResult:
    if not result.ok or (not changes_allowed and result.changed):
        print(result.log_tail(80), file=sys.stderr)
        raise SystemExit(
            f"{what}: {result.summary()}\n  " + "\n  ".join(result.changed_operations())
        )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description="no-change run over N hosts vs over 1")
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--skip-fresh", action="store_true", help="hosts already deployed")
    args = parser.parse_args()
    names = [f"rave-staging-{k}" for k in range(1, args.hosts + 1)]
    os.environ.pop("RAVE_STAGING_MONITORING", None)  # N service hosts
    load = os.getloadavg()[0]

    if not args.skip_fresh:
        boot = staging("up", "--fresh", "--hosts", str(args.hosts))
        fresh = must(run_deploy(), f"fresh deploy to {args.hosts} hosts", changes_allowed=True)
        print(
            f"boot {args.hosts} hosts: {boot:.1f} s; fresh deploy: {fresh.seconds:.1f} s "
            f"({fresh.changed} changes)",
            flush=True,
        )

    runs: dict[str, list[tuple[float, float, float]]] = {"all": [], "one": []}
    for _ in range(args.repeat):
        runs["all"].append(measured(run_deploy, f"no-change run over {args.hosts}"))
        runs["one"].append(measured(lambda: run_deploy(limit=names[0]), "no-change run over 1"))
        for key, count in (("all", args.hosts), ("one", 1)):
            wall, pyinfra, machine = runs[key][-1]
            print(
                f"  no-change over {count}: {wall:.1f} s wall, pyinfra {pyinfra:.2f} s CPU, "
                f"machine {machine:.1f} s CPU",
                flush=True,
            )
    best_all = min(runs["all"])
    best_one = min(runs["one"])
    ratio = best_all[0] / best_one[0]

    broken = names[-1]
    stopped = ssh(broken, "sudo systemctl stop ssh.service ssh.socket")
    if stopped.returncode != 0:
        raise SystemExit(f"could not stop sshd on {broken}: {stopped.stderr}")
    failing = run_deploy()
    others = [n for n in names if n != broken]
    touched = {
        host
        for op in failing.operations
        for host in (*op.changed_hosts, *op.error_hosts)
        if host != broken
    }
    report = [
        line.strip()
        for line in (failing.stderr + failing.stdout).splitlines()
        if broken in line
        and not line.lstrip().startswith("{")  # the --json document
        and ("rror" in line or "fail" in line.lower() or "connect" in line)
    ]
    staging("reboot", "--host", str(args.hosts))
    after = must(run_deploy(), "no-change run over all after the broken host is back")

    print()
    print(f"staging instance {instance_id()}, {args.hosts} hosts, load average at start {load:.1f}")
    print(f"no-change run over {args.hosts}: {', '.join(f'{r[0]:.1f}' for r in runs['all'])} s")
    print(f"no-change run over 1:  {', '.join(f'{r[0]:.1f}' for r in runs['one'])} s")
    cores = os.cpu_count() or 1
    print(
        f"CPU of the best runs (pyinfra / whole machine, {cores} cores): over {args.hosts} "
        f"{best_all[1]:.2f} / {best_all[2]:.1f} s, over 1 {best_one[1]:.2f} / {best_one[2]:.1f} s; "
        f"the machine alone bounds a run over {args.hosts} at {best_all[2] / cores:.1f} s"
    )
    verdict = "ok" if ratio <= LIMIT_RATIO else "OVER THE LIMIT"
    print(f"ratio (best/best): {ratio:.2f} (limit {LIMIT_RATIO}): {verdict}")
    print(
        f"with sshd stopped on {broken}: pyinfra exit {failing.returncode}, "
        f"{failing.seconds:.1f} s, failed hosts {list(failing.failed_hosts)}, "
        f"JSON parsed: {failing.parsed}"
    )
    for line in report[:6]:
        print(f"    pyinfra: {line}")
    print(f"  the other {len(others)} hosts: changes or errors on {sorted(touched) or 'none'}")
    print(f"after {broken} is back: {after.summary()}")
    ok = ratio <= LIMIT_RATIO and not touched and broken in failing.failed_hosts
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
