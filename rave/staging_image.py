"""`rave-staging image`: build the RAVE image from a staging host, and its Podman/QEMU units.

docs/image.md. The build boots the instance's host 1 fresh, deploys deploy.py to it, stops it
and exports its merged root without host identity (rave/image.py).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rave import image as img
from rave.modes import Mode
from rave.staging import (
    CACHE_DIR,
    Instance,
    StagingError,
    cached_root,
    check_instance_id,
    cmd_up,
    ensure_bridge,
    ensure_proxy,
    log,
    repo_root,
    run,
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
    qcow2 = image_sub.add_parser("qcow2", help="the image as a qcow2 disk plus kernel, initrd")
    qcow2.add_argument("--image", type=Path, default=img.default_output())
    qcow2.add_argument(
        "--output", type=Path, default=img.default_output().parent / "rave-image.qcow2"
    )
    check = image_sub.add_parser("boot-check", help="boot the qcow2 in QEMU until multi-user")
    check.add_argument("--qcow2", type=Path, required=True)
    check.add_argument("--timeout", type=float, default=900)
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


def build_qcow2(inst: Instance, tarball: Path, output: Path) -> dict[str, object]:
    """The image as a qcow2 disk for QEMU: the unpacked image plus Debian's kernel (installed
    with apt in a scratch overlay, through the instance's proxy as the image's apt is set up),
    written with mkfs.ext4 -d (no partition table, no bootloader: the kernel and initrd are
    files beside the disk, as in the staging VM) and converted with qemu-img."""
    from rave import staging_vm as sv

    for tool in ("qemu-img", "mkfs.ext4"):
        if not shutil.which(tool):
            raise StagingError(f"{tool} is not installed: run `make system-deps`")
    root, recipe = img.extract_root(tarball, CACHE_DIR / "images")
    ensure_bridge(inst)
    ensure_proxy(inst)  # the image's apt goes through the proxy its deploy was given
    scratch = inst.state / "image-qcow2"
    shutil.rmtree(scratch, ignore_errors=True)
    upper, work, merged = scratch / "upper", scratch / "work", scratch / "merged"
    for path in (upper, work, merged):
        path.mkdir(parents=True)
    upper.chmod(0o755)
    options = f"lowerdir={root},upperdir={upper},workdir={work}"
    run("mount", "-t", "overlay", "overlay", "-o", options, str(merged))
    started = time.monotonic()
    try:
        sv.install_kernel(merged, "the image")
        kernel, initrd = sv.kernel_files(merged)
        output.parent.mkdir(parents=True, exist_ok=True)
        stem = output.name.removesuffix(".qcow2")
        shutil.copyfile(kernel, output.with_name(f"{stem}.vmlinuz"))
        shutil.copyfile(initrd, output.with_name(f"{stem}.initrd.img"))
        raw = scratch / "disk.raw"
        run("truncate", "-s", sv.VM_DISK_SIZE, str(raw))
        run("mkfs.ext4", "-q", "-L", "rave-root", "-d", str(merged), str(raw), timeout=1800)
        partial = output.with_name(f".{output.name}.partial")
        run("qemu-img", "convert", "-O", "qcow2", str(raw), str(partial), timeout=1800)
        partial.replace(output)
    finally:
        run("umount", str(merged), check=False)
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "qcow2": str(output),
        "from": recipe,
        "kernel": output.with_name(f"{stem}.vmlinuz").name,
        "initrd": output.with_name(f"{stem}.initrd.img").name,
        "seconds": round(time.monotonic() - started, 1),
    }


# a booted image: its first boot made its own host key (rave/image.py prints the fingerprint
# on the console) and getty's prompt is there (multi-user.target)
NEW_KEY = re.compile(r"rave-host-identity: new SSH host key 256 (SHA256:\S+) \S+ \(ED25519\)")
LOGIN_PROMPT = re.compile(r"^\S+ login: ", re.M)


def boot_check(qcow2: Path, timeout: float) -> tuple[float, str]:
    """Boot the qcow2 under QEMU (-snapshot: the disk is not changed; no network) until the
    console shows the new host key and the login prompt; the seconds it took, the key's
    fingerprint."""
    from rave import staging_vm as sv

    stem = qcow2.name.removesuffix(".qcow2")
    kernel, initrd = qcow2.with_name(f"{stem}.vmlinuz"), qcow2.with_name(f"{stem}.initrd.img")
    accel = sv.cached_accel(kernel) or "tcg"
    console = qcow2.with_name(f"{stem}.console.log")
    console.unlink(missing_ok=True)
    command = [
        "qemu-system-x86_64", "-machine", "q35",
        "-accel", "kvm" if accel == "kvm" else "tcg,thread=multi",
        "-cpu", "host" if accel == "kvm" else "max",
        "-smp", str(sv.VM_CPUS), "-m", str(sv.VM_MEMORY_MB),
        "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none", "-no-reboot",
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", sv.KERNEL_CMDLINE,
        "-drive", f"file={qcow2},format=qcow2,if=virtio,snapshot=on",
        "-device", "virtio-rng-pci",
        "-chardev", f"file,id=console,path={console}", "-serial", "chardev:console",
    ]  # fmt: skip
    log(f"booting {qcow2.name} under QEMU ({accel}); console {console}")
    started = time.monotonic()
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        while time.monotonic() - started < timeout:
            text = console.read_text(errors="replace") if console.exists() else ""
            key = NEW_KEY.search(text)
            if key and LOGIN_PROMPT.search(text):
                return time.monotonic() - started, key.group(1)
            if process.poll() is not None:
                raise StagingError(f"qemu exited ({process.returncode}); console {console}")
            time.sleep(2)
        raise StagingError(f"not booted within {timeout:.0f}s; console {console}")
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def image_command(inst: Instance, args: argparse.Namespace) -> int:
    try:
        return _image_command(inst, args)
    except img.ImageError as error:
        raise StagingError(str(error)) from error


def _image_command(inst: Instance, args: argparse.Namespace) -> int:
    if args.image_command == "build":
        manifest = build(inst, args.output, args.reuse)
        print(json.dumps(manifest, indent=2))
        print(
            f"import: machinectl import-tar {args.output} rave | "
            f"podman import {args.output} localhost/rave:latest"
        )
    elif args.image_command == "qcow2":
        print(json.dumps(build_qcow2(inst, args.image.resolve(), args.output.resolve()), indent=2))
    elif args.image_command == "boot-check":
        seconds, fingerprint = boot_check(args.qcow2.resolve(), args.timeout)
        print(f"{args.qcow2}: its own host key {fingerprint}, login prompt after {seconds:.0f}s")
    elif args.image_command == "quadlet":
        print(img.quadlet_text(args.mode, args.image), end="")
    elif args.image_command == "qemu-unit":
        print(img.qemu_unit_text(args.mode, args.disk, args.kernel, args.initrd), end="")
    return 0
