"""`rave-staging image`: build the RAVE image from a staging host, and its Podman/QEMU units.

docs/image.md. The build boots the instance's host 1 fresh, deploys deploy.py to it, stops it
and exports its merged root without host identity (rave/image.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rave import image as img
from rave.modes import Mode
from rave.staging import (
    Instance,
    StagingError,
    cached_root,
    check_instance_id,
    cmd_up,
    log,
    repo_root,
    teardown_host,
)

BUILD_HOST = 1


def add_image_parser(sub: Any) -> None:
    parser = sub.add_parser("image", help="the RAVE image: build it, its Podman and QEMU units")
    image_sub = parser.add_subparsers(dest="image_command", required=True)
    build = image_sub.add_parser(
        "build", help="deploy a fresh host 1, export its root without host identity"
    )
    build.add_argument("--output", type=Path, default=img.default_output())
    build.add_argument(
        "--reuse",
        action="store_true",
        help="export host 1 as it is (already deployed) instead of deploying a fresh one",
    )
    quadlet = image_sub.add_parser("quadlet", help="print the hardened Podman Quadlet unit")
    quadlet.add_argument("--mode", type=Mode, choices=list(Mode), default=Mode.SAFE)
    quadlet.add_argument("--image", default="localhost/rave:latest", help="podman image name")
    qemu = image_sub.add_parser("qemu-unit", help="print the systemd unit running the qcow2")
    qemu.add_argument("--mode", type=Mode, choices=list(Mode), default=Mode.SAFE)
    qemu.add_argument("--disk", default="/var/lib/rave-vm/rave.qcow2")
    qemu.add_argument("--kernel", default="/var/lib/rave-vm/vmlinuz")
    qemu.add_argument("--initrd", default="/var/lib/rave-vm/initrd.img")


def deploy_host(inst: Instance) -> float:
    """deploy.py onto the build host; its duration in seconds."""
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyinfra",
            "-y",
            "inventories/staging.py",
            "deploy.py",
            "--limit",
            inst.host(BUILD_HOST).name,
        ],
        cwd=repo_root(),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        raise StagingError(f"the deploy to the build host failed:\n{tail}")
    return time.monotonic() - started


def build(inst: Instance, output: Path, reuse: bool) -> dict[str, object]:
    host = inst.host(BUILD_HOST)
    deploy_seconds = None
    if not reuse:
        cmd_up(inst, 1, fresh=True)
        if host.image() is not None:
            raise StagingError("host 1 boots from an image: build from the cached root")
        log("deploying deploy.py to the build host ...")
        deploy_seconds = deploy_host(inst)
        log(f"deployed in {deploy_seconds:.0f}s")
    if not (host.upper / "etc/rave/release.json").exists():
        raise StagingError(f"{host.name} was never fully deployed (no /etc/rave/release.json)")
    if host.image() is not None:
        raise StagingError(f"{host.name} boots from an image: `up --fresh` it first")
    with inst.locked():
        check_instance_id(inst)
        log(f"stopping {host.name} for a consistent root ...")
        teardown_host(host)
        log(f"exporting {output} ...")
        manifest = img.export_root(
            [host.upper, cached_root()], inst.state / "image-build", output.resolve()
        )
    if deploy_seconds is not None:
        manifest["build_deploy_seconds"] = round(deploy_seconds, 1)
    return manifest


def image_command(inst: Instance, args: argparse.Namespace) -> int:
    if args.image_command == "build":
        manifest = build(inst, args.output, args.reuse)
        print(json.dumps(manifest, indent=2))
        print(
            f"import: machinectl import-tar {args.output} rave | "
            f"podman import {args.output} localhost/rave:latest"
        )
    elif args.image_command == "quadlet":
        print(img.quadlet_text(args.mode, args.image), end="")
    elif args.image_command == "qemu-unit":
        print(img.qemu_unit_text(args.mode, args.disk, args.kernel, args.initrd), end="")
    return 0
