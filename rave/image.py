"""The RAVE image: a deployed root without host identity (docs/image.md).

Built from a staging host: the full ``deploy.py`` applied to a fresh cached bookworm root, the
container stopped, its merged root (upper layer over the cached root) seen through a scratch
overlay where host identity is removed, then exported with tar (ownership numeric, xattrs,
ACLs) as a root tarball that ``machinectl import-tar`` and ``podman import`` read.

Only the staging CLI (``rave-staging image``) and bench/image.py import this module; nothing of a
production deploy does.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from rave.components import public_ports
from rave.modes import PROFILES, Mode

IMAGE_RECIPE_PREFIX = "image"
# systemd's first boot (empty /etc/machine-id) runs `preset-all` in enable-only mode, and
# Debian ships no "disable *": every unit with an [Install] section would be enabled (ssh.socket
# next to ssh.service among them). The image's enabled units are exactly what the deploy left.
PRESET_PATH = "etc/systemd/system-preset/00-rave-image.preset"
PRESET_TEXT = (
    "# rave image (rave/image.py): the first boot of an image must not enable any unit; the\n"
    "# deploy decides what runs\n"
    "disable *\n"
)
FIRST_BOOT_UNIT = "rave-host-identity.service"
FIRST_BOOT_UNIT_TEXT = """\
# rave image (rave/image.py): an image has no SSH host key; each host makes its own at first
# boot, before sshd starts (the hardening task keeps only this Ed25519 key)
[Unit]
Description=RAVE image: this host's own SSH host key
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
Before=ssh.service ssh.socket

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key
# the fingerprint on the console: compare it with what ssh-keyscan gives before trusting that
ExecStartPost=/bin/sh -c 'echo "rave-host-identity: new SSH host key \
$$(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub)"'
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
"""
WANTS_LINK = f"etc/systemd/system/multi-user.target.wants/{FIRST_BOOT_UNIT}"
# host identity and per-host material: (path in the root, why); a directory keeps its entry but
# loses its contents (their owners and modes are the deploy's)
REMOVED_FILES = {
    "etc/ssh/ssh_host_ed25519_key": "the SSH host key: each host has its own (age recipient)",
    "etc/ssh/ssh_host_ed25519_key.pub": "the SSH host key",
    "etc/ssh/ssh_host_rsa_key": "a host key",
    "etc/ssh/ssh_host_rsa_key.pub": "a host key",
    "etc/ssh/ssh_host_ecdsa_key": "a host key",
    "etc/ssh/ssh_host_ecdsa_key.pub": "a host key",
    "etc/rave/secrets.age": "the environment's secrets, encrypted to the build host's key",
    "var/lib/dbus/machine-id": "the machine id (a link to /etc/machine-id at first boot)",
    "var/lib/systemd/random-seed": "the kernel RNG seed: never shared between hosts",
    "var/lib/systemd/credential.secret": "systemd's per-host credential key",
    "etc/hostname": "the build host's name: the provider (cloud-init, nspawn) names the host",
    "etc/sudoers.d/agent": "the staging harness's sudo rule (production: ops/bootstrap.py)",
    "etc/sudoers.d/rave-operator": "ops/bootstrap.py's per-host sudo rule",
    "var/lib/rave-staging/provisioned": "the staging harness's provisioning marker",
    ".rave-staging-root": "the staging cache's recipe marker",
    "etc/systemd/system/getty@tty1.service": "a staging harness mask",
    "etc/systemd/system/systemd-networkd-wait-online.service": "a staging harness mask",
}
# log files are emptied, not removed: their owners and modes are the deploy's or the packages'
TRUNCATED_DIRS = {"var/log": "the build host's logs"}
EMPTIED_DIRS = {
    "var/log/journal": "the build host's journal",
    "var/lib/prometheus/metrics2": "the build host's metrics",
    "var/lib/fail2ban": "fail2ban's bans of the build host",
    "var/lib/rave-backup": "backup state of the build host (the repository password marker)",
    "var/backups/rave": "the build host's local restic repository (its data, its key)",
    "var/cache/rave-backup": "restic's cache of that repository",
    "var/tmp": "temporary files",
    "tmp": "temporary files",
    "root": "root's history and caches",
    "run": "runtime state (a tmpfs on every boot)",
}
HOME_FILES = (".ssh/authorized_keys", ".bash_history", ".python_history", ".lesshst")


class ImageError(Exception):
    pass


def run(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=timeout)
    if result.returncode != 0:
        raise ImageError(
            f"{' '.join(args[:2])} failed ({result.returncode}): {result.stderr[-2000:]}"
        )
    return result


def _empty_dir(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        return
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            _empty_dir(entry)  # keep the deploy's directories (owner, mode), drop the files
        else:
            entry.unlink()


def inside(root: Path, rel: str) -> Path | None:
    """root/rel, unless a symlink on the way leads out of root: an absolute link in the image
    (etc/ssh -> /etc/ssh) must never make the build delete the control machine's files."""
    path = root / rel
    if not path.parent.resolve().is_relative_to(root.resolve()):
        return None
    return path


def _truncate_files(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        return
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            _truncate_files(entry)
        elif entry.is_file() and not entry.is_symlink():
            with open(entry, "r+b") as handle:
                handle.truncate(0)


def remove_identity(root: Path) -> list[str]:
    """Strip host identity from a deployed root in place; what was removed, for the manifest."""
    done = []
    for rel, why in REMOVED_FILES.items():
        path = inside(root, rel)
        if path is not None and (path.is_symlink() or path.exists()):
            path.unlink()
            done.append(f"/{rel}: {why}")
    for rel, why in TRUNCATED_DIRS.items():
        path = inside(root, rel)
        if path is not None and path.is_dir():
            _truncate_files(path)
            done.append(f"/{rel}/*: emptied, {why}")
    for rel, why in EMPTIED_DIRS.items():
        path = inside(root, rel)
        if path is not None and path.is_dir():
            _empty_dir(path)
            done.append(f"/{rel}/*: {why}")
    homes = root / "home"
    for home in sorted(homes.iterdir()) if homes.is_dir() and not homes.is_symlink() else []:
        for name in HOME_FILES:
            path = inside(root, f"home/{home.name}/{name}")
            if path is not None and (path.is_file() or path.is_symlink()):
                path.unlink()
                done.append(f"/home/{home.name}/{name}: the operators' access is per host")
    for rel in ("etc/machine-id", "etc/hosts", "etc/resolv.conf", PRESET_PATH, WANTS_LINK):
        if inside(root, rel) is None:
            raise ImageError(f"/{rel} leads out of the image root")
    # empty, not missing: systemd makes a new one and treats the boot as the first
    machine_id = root / "etc/machine-id"
    machine_id.unlink(missing_ok=True)
    machine_id.write_text("")
    machine_id.chmod(0o444)
    done.append("/etc/machine-id: emptied (a new one at first boot)")
    (root / "etc/hosts").unlink(missing_ok=True)
    (root / "etc/hosts").write_text(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    )
    resolv = root / "etc/resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.write_text("")  # the provider's (staging has no DNS; podman and nspawn bind theirs)
    preset = root / PRESET_PATH
    preset.parent.mkdir(parents=True, exist_ok=True)
    preset.write_text(PRESET_TEXT)
    link = root / WANTS_LINK
    link.parent.mkdir(parents=True, exist_ok=True)
    (root / "etc/systemd/system" / FIRST_BOOT_UNIT).write_text(FIRST_BOOT_UNIT_TEXT)
    if not link.is_symlink():
        link.symlink_to(f"/etc/systemd/system/{FIRST_BOOT_UNIT}")
    return done


def tar_root(root: Path, output: Path) -> None:
    """A gzip'd root tarball: numeric owners, modes, xattrs (file capabilities), ACLs."""
    partial = output.with_name(f".{output.name}.partial")
    run(
        "tar",
        "--create",
        "--gzip",
        f"--file={partial}",
        f"--directory={root}",
        "--numeric-owner",
        "--preserve-permissions",
        "--xattrs",
        "--xattrs-include=*",
        "--acls",
        "--sparse",
        "--one-file-system",
        ".",
    )
    partial.replace(output)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_root(lowers: list[Path], scratch: Path, output: Path) -> dict[str, object]:
    """Export the union of `lowers` (top first) without host identity, through a scratch
    overlay: neither the host's upper layer nor the cached root is changed."""
    shutil.rmtree(scratch, ignore_errors=True)
    upper, work, merged = scratch / "upper", scratch / "work", scratch / "merged"
    for path in (upper, work, merged):
        path.mkdir(parents=True)
    upper.chmod(0o755)  # the merged root's mode
    lowerdir = ":".join(str(p) for p in lowers)
    run(
        "mount",
        "-t",
        "overlay",
        "overlay",
        "-o",
        f"lowerdir={lowerdir},upperdir={upper},workdir={work}",
        str(merged),
    )
    try:
        # what the build host was, to check an image host is someone else (public values only)
        build_key = merged / "etc/ssh/ssh_host_ed25519_key.pub"
        build_identity = {
            "host_key": " ".join(build_key.read_text().split()[:2]) if build_key.exists() else "",
            "machine_id_sha256": hashlib.sha256(
                (merged / "etc/machine-id").read_bytes().strip()
            ).hexdigest(),
        }
        removed = remove_identity(merged)
        release_file = merged / "etc/rave/release.json"
        release = json.loads(release_file.read_text()) if release_file.exists() else {}
        started = time.monotonic()
        output.parent.mkdir(parents=True, exist_ok=True)
        tar_root(merged, output)
        tar_seconds = time.monotonic() - started
    finally:
        subprocess.run(["umount", str(merged)], check=False)
        shutil.rmtree(scratch, ignore_errors=True)
    manifest: dict[str, object] = {
        "image": output.name,
        "sha256": sha256_file(output),
        "bytes": output.stat().st_size,
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "release": release,
        "removed": removed,
        "build_host": build_identity,
        "tar_seconds": round(tar_seconds, 1),
    }
    manifest_path = output.with_name(output.name.removesuffix(".tar.gz") + ".json")
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def extract_root(tarball: Path, cache: Path) -> tuple[Path, str]:
    """The tarball unpacked once into `cache/<sha256 prefix>/root` (a marker when complete);
    returns the root and its recipe (what a staging host's upper layer was made on)."""
    digest = sha256_file(tarball)
    recipe = f"{IMAGE_RECIPE_PREFIX} {digest}"
    base = cache / digest[:16]
    root = base / "root"
    marker = base / "complete"
    cache.mkdir(parents=True, exist_ok=True)
    # one unpacker at a time (`up --image` and `image qcow2` may start together)
    with open(cache / ".extract.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (marker.exists() and marker.read_text().strip() == recipe):
            _unpack(tarball, base, root)
            marker.write_text(recipe + "\n")
    return root, recipe


def _unpack(tarball: Path, base: Path, root: Path) -> None:
    shutil.rmtree(base, ignore_errors=True)
    temp = base / "root.partial"
    temp.mkdir(parents=True)
    temp.chmod(0o755)
    run(
        "tar",
        "--extract",
        f"--file={tarball}",
        f"--directory={temp}",
        "--numeric-owner",
        "--preserve-permissions",
        "--xattrs",
        "--xattrs-include=*",
        "--acls",
    )
    temp.rename(root)


# -- Podman -----------------------------------------------------------------------------------
# The host size of each mode (rave/modes.py: SAFE "a 2 GB host", FULL_PIPE "a 4 GB host"); the
# seed's SAFE host has 2 vCPUs. The container gets what such a host has.
HOST_SHAPE: dict[Mode, tuple[int, int]] = {Mode.SAFE: (2048, 2), Mode.FULL_PIPE: (4096, 4)}
# Every capability is dropped, then only these are given back (in the container's user
# namespace, UserNS=auto): what systemd as PID 1, sshd and the units' own sandboxes need.
QUADLET_CAPABILITIES = {
    "CHOWN": "the secrets service chowns the decrypted files to their readers",
    "DAC_OVERRIDE": "root's services (secrets, backup) read files of other users",
    "DAC_READ_SEARCH": "the backup reads every backed-up path",
    "FOWNER": "systemd and the secrets service set modes on others' files",
    "FSETID": "keeping setgid directories (PostgreSQL, journald)",
    "KILL": "systemd stops services running as other users",
    "SETGID": "systemd, sshd and sudo-less services drop to their own group",
    "SETUID": "systemd and sshd switch to the service's or operator's user",
    "SETPCAP": "systemd bounds each unit's capabilities (CapabilityBoundingSet)",
    "NET_BIND_SERVICE": "sshd binds 22",
    "NET_ADMIN": "nftables (firewall, fail2ban) in the container's own network namespace",
    "SYS_CHROOT": "sshd's privilege separation",
    "AUDIT_WRITE": "sshd's login records",
    "SYS_ADMIN": "systemd's per-unit sandboxes (ProtectSystem, PrivateTmp) are mount "
    "namespaces; confined to the container's user namespace",
}
# writable under the read-only root: named volumes (podman copies the image's content into an
# empty one), everything else of the image read-only
QUADLET_VOLUMES = {
    "rave-etc-ssh": ("/etc/ssh", "the host key made at first boot"),
    "rave-etc-rave": ("/etc/rave", "the encrypted secrets the deploy provisions"),
    "rave-home": ("/home", "the operators' authorized_keys"),
    "rave-var": ("/var", "PostgreSQL, the webhook spool, Prometheus, logs, backups"),
}


def quadlet_text(mode: Mode, image: str = "localhost/rave:latest", name: str = "rave") -> str:
    """A hardened Podman Quadlet unit running the image with systemd as PID 1."""
    memory_mb, cpus = HOST_SHAPE[mode]
    profile = PROFILES[mode]
    services_mb = sum(limit.memory_max_mb for limit in profile.limits.values())
    if max(profile.host_memory_min_mb, services_mb) > memory_mb:
        # an OOM inside must hit one unit's MemoryMax, never the whole container
        raise ImageError(f"mode {mode}: its services' MemoryMax exceed the container's memory")
    lines = [
        f"# generated by `rave-staging image quadlet --mode {mode.value}` (rave/image.py);",
        "# docs/image.md. Install as /etc/containers/systemd/rave.container, then",
        "# `systemctl daemon-reload && systemctl start rave`.",
        "[Unit]",
        f"Description=RAVE host in Podman (image {image}, mode {mode.value})",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Container]",
        f"Image={image}",
        f"ContainerName={name}",
        f"HostName={name}",
        "Exec=/sbin/init",
        "# systemd is PID 1: podman mounts /run, /tmp and the cgroup tree for it",
        "ReadOnly=true",
        "# no setuid: sudo is refused inside; operators and the deploy enter with `podman exec`",
        "# (pyinfra's @podman connector), root of the container's user namespace",
        "NoNewPrivileges=true",
        "UserNS=auto",
        "DropCapability=ALL",
    ]
    for cap, why in QUADLET_CAPABILITIES.items():
        lines.append(f"# {why}")
        lines.append(f"AddCapability=CAP_{cap}")
    for volume, (path, why) in QUADLET_VOLUMES.items():
        lines.append(f"# {why}")
        lines.append(f"Volume={volume}:{path}")
    lines += [f"PublishPort={port}:{port}" for port in public_ports()]
    lines += [
        f"# mode {mode.value}: a {memory_mb} MB host with {cpus} vCPUs; no swap beyond it",
        f"PodmanArgs=--systemd=always --memory={memory_mb}m --memory-swap={memory_mb}m "
        f"--cpus={cpus} --pids-limit=4096",
        "",
        "[Service]",
        "Restart=on-failure",
        "RestartSec=10",
        "TimeoutStartSec=300",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


# -- QEMU -------------------------------------------------------------------------------------
def qemu_unit_text(mode: Mode, disk: str, kernel: str, initrd: str, name: str = "rave") -> str:
    """A systemd unit running the image's qcow2 disk under QEMU/KVM on a hypervisor host."""
    memory_mb, cpus = HOST_SHAPE[mode]
    return f"""\
# generated by `rave-staging image qemu-unit --mode {mode.value}` (rave/image.py); docs/image.md
[Unit]
Description=RAVE host {name} in QEMU/KVM (mode {mode.value})
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart=/usr/bin/qemu-system-x86_64 -name {name} -machine q35,accel=kvm -cpu host \\
  -m {memory_mb} -smp {cpus} -nodefaults -nographic -no-user-config \\
  -kernel {kernel} -initrd {initrd} \\
  -append "root=/dev/vda rw console=ttyS0 audit=1 apparmor=1 security=apparmor" \\
  -drive file={disk},if=virtio,format=qcow2,cache=none,aio=native,discard=unmap \\
  -netdev tap,id=net0,ifname=tap-{name},script=no,downscript=no \\
  -device virtio-net-pci,netdev=net0 -device virtio-rng-pci \\
  -serial file:/var/log/rave-vm/{name}-console.log -monitor none
ExecStartPre=/usr/bin/install -d -m 0750 /var/log/rave-vm
# a clean poweroff (ACPI) before systemd kills qemu
KillSignal=SIGTERM
TimeoutStopSec=90
Restart=on-failure
RestartSec=15
MemoryMax={memory_mb + 512}M

[Install]
WantedBy=multi-user.target
"""


def default_output() -> Path:
    return Path(os.environ.get("RAVE_IMAGE_DIR", "dist")) / "rave-image.tar.gz"
