"""First deploy onto a host booted from the RAVE image vs onto a fresh host (docs/image.md).

    RAVE_STAGING_ID=<n> .venv/bin/python bench/image.py --image dist/rave-image.tar.gz

Build the image first (`rave-staging image build`). Wipes the instance's hosts: boots host 1
fresh from the cached root and deploys deploy.py (timed), then boots it from the image and
deploys again (timed, with the operations that changed), then re-runs (must change nothing).
Also checks what the image must not carry: the image host's SSH host key and machine-id are
not the build host's, and no value of the staging secrets appears in any file of the tarball.
Leaves the image host running and deployed (RAVE_STAGING_REUSE=1 runs host suites on it).
`--skip-fresh` leaves out the fresh host (the figure from a run before).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rave.deployrun import DeployResult, run_deploy  # noqa: E402
from rave.secrets import crypto  # noqa: E402
from rave.secrets.store import STAGING_ENVIRONMENT, STAGING_IDENTITY, Environment  # noqa: E402
from rave.staging import Instance, instance_id  # noqa: E402


def staging(*args: str) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "rave.staging", *args], cwd=REPO, check=True)
    return time.monotonic() - started


def deployed(label: str) -> DeployResult:
    result = run_deploy("inventories/staging.py", ["deploy.py"])
    if not result.ok:
        print(result.log_tail(), file=sys.stderr)
        raise SystemExit(f"{label} failed: {result.summary()}")
    return result


def secret_needles(inst: Instance) -> dict[str, bytes]:
    """A recognisable piece of every staging secret value (a PEM key: one of its body lines)."""
    env = Environment.named(STAGING_ENVIRONMENT, inst.state / "secrets")
    model = env.decrypt(crypto.load_identities(inst.state / STAGING_IDENTITY))
    needles: dict[str, bytes] = {}

    def walk(name: str, value: object) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{name}.{key}", inner)
        elif isinstance(value, list):
            for index, inner in enumerate(value):
                walk(f"{name}[{index}]", inner)
        elif isinstance(value, str) and len(value) >= 12:
            if "-----BEGIN" in value:
                body = [line for line in value.splitlines() if line and "-----" not in line]
                needles[name] = body[len(body) // 2].encode()
            else:
                needles[name] = value.encode()

    for name, value in model.model_dump().items():
        if name != "tls_certificate":  # public
            walk(name, value)
    return needles


def scan_tarball(tarball: Path, needles: dict[str, bytes]) -> list[str]:
    found = []
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive:
            if not member.isfile():
                continue
            handle = archive.extractfile(member)
            data = handle.read() if handle else b""
            found += [f"{name} in /{member.name}" for name, n in needles.items() if n in data]
    return found


def host_identity(inst: Instance) -> tuple[str, str]:
    root = inst.host(1).root
    key = " ".join((root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[:2])
    machine_id = (root / "etc/machine-id").read_bytes().strip()
    return key, hashlib.sha256(machine_id).hexdigest() if machine_id else ""


def main() -> int:
    parser = argparse.ArgumentParser(description="first deploy onto an image host vs fresh")
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--skip-fresh", action="store_true")
    args = parser.parse_args()
    tarball = args.image.resolve()
    manifest_file = tarball.with_name(tarball.name.removesuffix(".tar.gz") + ".json")
    manifest = json.loads(manifest_file.read_text())
    inst = Instance(instance_id())
    rows = []
    if not args.skip_fresh:
        boot = staging("up", "--fresh", "--hosts", "1")
        fresh = deployed("the deploy to a fresh host")
        rows.append(("fresh (cached root)", boot, fresh))
    boot = staging("up", "--fresh", "--hosts", "1", "--image", str(tarball))
    key, machine_id = host_identity(inst)
    problems = []
    if not machine_id or machine_id == manifest["build_host"]["machine_id_sha256"]:
        problems.append("the image host has no machine-id of its own")
    if key == manifest["build_host"]["host_key"]:
        problems.append("the image host has the build host's SSH host key")
    first = deployed("the first deploy to the image host")
    rows.append(("image host", boot, first))
    rerun = deployed("the re-run on the image host")
    needles = secret_needles(inst)
    leaks = scan_tarball(tarball, needles)
    problems += [f"secret value in the image: {leak}" for leak in leaks]

    print(f"staging instance {inst.id}, image {tarball.name} ({manifest['bytes'] / 2**20:.0f} MiB)")
    print(f"{'host':<22} {'boot s':>7} {'deploy s':>9} {'changed':>8}")
    for label, boot_s, result in rows:
        print(f"{label:<22} {boot_s:>7.1f} {result.seconds:>9.1f} {result.changed:>8}")
    print(f"{'image host re-run':<22} {'':>7} {rerun.seconds:>9.1f} {rerun.changed:>8}")
    if len(rows) == 2:
        share = first.seconds / rows[0][2].seconds
        print(f"first deploy onto the image: {share:.0%} of the fresh one's time")
    print("changed by the first deploy onto the image host:")
    for name in first.changed_operations():
        print(f"  {name}")
    own = key != manifest["build_host"]["host_key"]
    print(f"identity: host key {key.split()[1][:16]}..., not the build host's: {own}")
    print(f"secret values searched in the tarball: {len(needles)}, found: {len(leaks)}")
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if problems or rerun.changed else 0


if __name__ == "__main__":
    sys.exit(main())
