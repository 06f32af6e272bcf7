"""Wall time of a deploy to fresh staging hosts and of a no-change re-run, for 1 and 3 hosts.

    RAVE_STAGING_ID=<n> .venv/bin/python bench/deploy_time.py [--hosts 1 3] [deploy.py ...]

For 10 hosts (no-change run over 10 vs over 1, a host with sshd stopped): bench/deploy_scale.py.

Wipes the instance's staging hosts (rave-staging up --fresh). The apt archive cache
(/var/cache/rave-staging/apt-archives-<n>) is kept, so "fresh" means fresh hosts with a warm
package cache, as in `make test`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rave.deployrun import run_deploy  # noqa: E402
from rave.staging import instance_id  # noqa: E402


def staging(*args: str) -> float:
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "rave.staging", *args],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description="deploy wall time on fresh staging hosts")
    parser.add_argument("--hosts", type=int, nargs="+", default=[1, 3])
    parser.add_argument("deploys", nargs="*", default=["deploy.py"])
    args = parser.parse_args()
    rows = []
    for count in args.hosts:
        boot = staging("up", "--fresh", "--hosts", str(count))
        fresh = run_deploy("inventories/staging.py", args.deploys)
        if not fresh.ok:
            print(fresh.log_tail(), file=sys.stderr)
            print(f"fresh deploy to {count} host(s) failed: {fresh.summary()}", file=sys.stderr)
            return 1
        rerun = run_deploy("inventories/staging.py", args.deploys)
        if not rerun.ok:
            print(rerun.log_tail(), file=sys.stderr)
            print(f"re-run on {count} host(s) failed: {rerun.summary()}", file=sys.stderr)
            return 1
        rows.append((count, boot, fresh.seconds, fresh.changed, rerun.seconds, rerun.changed))
    print(f"staging instance {instance_id()}, deploy: {' '.join(args.deploys)}")
    print(
        f"{'hosts':>5} {'boot s':>8} {'fresh s':>8} {'changed':>8} {'re-run s':>9} {'changed':>8}"
    )
    for count, boot, fresh_s, fresh_n, rerun_s, rerun_n in rows:
        print(f"{count:>5} {boot:>8.1f} {fresh_s:>8.1f} {fresh_n:>8} {rerun_s:>9.1f} {rerun_n:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
