"""A local QEMU VM next to the staging containers (`rave-staging vm up|down|status`).

A container cannot run auditd (no audit in a child PID namespace), set kernel.* sysctls or
manage AppArmor; a VM with its own Debian kernel can. One VM per staging instance:

- image: the cached bookworm root plus Debian's linux-image-amd64, cached as a directory
  (``/var/cache/rave-staging/bookworm-vm-root``, a recipe marker like the container root). The
  VM's disk ``.staging/vm/disk.img`` is an ext4 image made with ``mkfs.ext4 -d`` from an
  overlay of that root with the VM's identity written in by the containers' ``provision()``
  (no loop mount, no bootloader: qemu boots the cached kernel and initrd directly).
- network: a tap ``rv<n>vm`` on the instance's bridge, address ``10.213.<n>.100``; like the
  containers its only way out is the instance's tinyproxy. No user-mode networking.
- acceleration: KVM when it can boot the guest kernel (probed once per machine and guest
  kernel, cached), else TCG. ``RAVE_STAGING_VM_ACCEL=kvm|tcg`` forces one.
- the same operator account and key as the containers; ``.staging/ssh_config`` gets a
  ``rave-staging-vm`` entry and ``inventories/staging_vm.py`` deploys to it.

``up`` clears what a killed session left (a qemu of this instance, a stale tap); ``down`` removes
what ``up`` made (qemu, tap; the bridge and proxy too when no container of the instance runs).
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

from rave import staging as st

VM_PACKAGES = ("linux-image-amd64", "udev", "kmod", "iproute2")
# Bump when the recipe changes: a cached VM root with another marker is rebuilt.
VM_RECIPE = f"1 {st.ROOT_RECIPE} + {','.join(VM_PACKAGES)}"
VM_MARKER = ".rave-staging-vm-root"
VM_ADDRESS_OCTET = 100  # containers use .11-.22
VM_DISK_SIZE = os.environ.get("RAVE_STAGING_VM_DISK", "8G")  # sparse
VM_MEMORY_MB = int(os.environ.get("RAVE_STAGING_VM_MEMORY", "2048"))
VM_CPUS = int(os.environ.get("RAVE_STAGING_VM_CPUS", "2"))
# TCG boots in about a minute on 2 shared cores; the first boot's ssh host setup adds more
VM_BOOT_TIMEOUT = float(os.environ.get("RAVE_STAGING_VM_BOOT_TIMEOUT", "600"))
KVM_PROBE_SECONDS = 20.0  # a working KVM prints the kernel banner within a second or two
KERNEL_CMDLINE = "root=/dev/vda rw console=ttyS0 audit=1 panic=-1 net.ifnames=0"


class VmHost(st.Host):
    """The instance's VM: a Host (same identity, provisioning, ssh handling) on a tap."""

    @property
    def name(self) -> str:
        return "rave-staging-vm"

    @property
    def machine(self) -> str:
        return f"rave-staging-{self.instance.id}-vm"

    @property
    def address(self) -> str:
        return f"{self.instance.subnet}.{VM_ADDRESS_OCTET}"

    @property
    def address6(self) -> str:
        return self.instance.ipv6(VM_ADDRESS_OCTET)

    @property
    def netns(self) -> str:
        return ""  # qemu runs in the control machine's namespace; the guest is on the tap

    @property
    def qemu_name(self) -> str:
        """qemu's -name argument: how this instance's qemu is recognised in /proc/PID/cmdline."""
        return f"guest={self.machine},process={self.machine}"

    @property
    def tap(self) -> str:
        return f"rv{self.instance.id}vm"

    @property
    def mac(self) -> str:
        return f"02:72:76:{self.instance.id:02x}:fe:02"

    @property
    def dir(self) -> Path:
        return self.instance.state / "vm"

    @property
    def disk(self) -> Path:
        return self.dir / "disk.img"

    @property
    def pidfile(self) -> Path:
        return self.dir / "qemu.pid"

    @property
    def accel_file(self) -> Path:
        return self.dir / "accel"

    @property
    def json_file(self) -> Path:
        return self.dir / "vm.json"

    def pid(self) -> int | None:
        pid = st.read_pid(self.pidfile)
        if pid and st.pid_alive(pid) and self.qemu_name in st.cmdline(pid):
            return pid
        return None


def vm_host(inst: st.Instance) -> VmHost:
    return VmHost(0, inst)


# -- the cached VM root ---------------------------------------------------------------------
def cached_vm_root() -> Path:
    return st.CACHE_DIR / f"{st.SUITE}-vm-root"


def vm_root_ready(root: Path) -> bool:
    try:
        return (root / VM_MARKER).read_text().strip() == VM_RECIPE
    except OSError:
        return False


def kernel_files(root: Path) -> tuple[Path, Path]:
    """The newest kernel and its initrd in the root's /boot."""
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise st.StagingError(f"no kernel in {root}/boot: delete {root} and run `vm up` again")
    kernel = kernels[-1]
    initrd = root / "boot" / f"initrd.img-{kernel.name.removeprefix('vmlinuz-')}"
    if not initrd.exists():
        raise st.StagingError(f"{kernel} has no initrd ({initrd})")
    return kernel, initrd


def ensure_vm_root() -> Path:
    """The container root plus a kernel (apt-get in a chroot of a copy; temp dir + rename)."""
    root = cached_vm_root()
    if vm_root_ready(root):
        return root
    base = st.ensure_cached_root()
    with open(st.CACHE_DIR / ".build-vm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another instance may be building it right now
        if vm_root_ready(root):
            return root
        if not shutil.which("mkfs.ext4") or not shutil.which("qemu-system-x86_64"):
            raise st.StagingError("qemu-system-x86 or e2fsprogs missing: run `make system-deps`")
        temp = st.CACHE_DIR / f"{st.SUITE}-vm-root.tmp-{os.getpid()}"
        for stale in st.CACHE_DIR.glob(f"{st.SUITE}-vm-root.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        st.log("building the cached VM root: the container root + a kernel (about 2 minutes) ...")
        started = time.monotonic()
        st.run("cp", "-a", "--reflink=auto", str(base), str(temp), timeout=600)
        try:
            install_kernel(temp, "the VM root")
        except st.StagingError:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        kernel_files(temp)  # fails here, not at boot, if the kernel package left no initrd
        (temp / VM_MARKER).write_text(VM_RECIPE + "\n")
        if root.exists():
            shutil.rmtree(root)
        temp.rename(root)
        st.log(f"cached VM root ready in {time.monotonic() - started:.0f}s: {root}")
    return root


def install_kernel(root: Path, what: str) -> None:
    """Debian's kernel and initrd (VM_PACKAGES) into a root, in a chroot. The control machine's
    resolver serves the install only; the root's resolv.conf is left empty (provisioning fills
    it)."""
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    shutil.copyfile("/etc/resolv.conf", resolv)
    script = (
        "set -e\n"
        "export DEBIAN_FRONTEND=noninteractive\n"
        "apt-get update -q\n"
        f"apt-get install -y -q --no-install-recommends {' '.join(VM_PACKAGES)}\n"
        "apt-get clean\n"
    )
    result = st.run("chroot", str(root), "/bin/sh", "-c", script, check=False, timeout=1800)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise st.StagingError(
            f"installing the kernel into {what} failed ({result.returncode}):\n{tail}"
        )
    resolv.write_text("")


# -- the VM's disk ----------------------------------------------------------------------------
def provision_vm(vm: VmHost) -> None:
    """What a VM needs beyond a container's provisioning: its own network configuration."""
    root = vm.root
    inst = vm.instance
    network = root / "etc/systemd/network/10-rave-staging.network"
    network.parent.mkdir(parents=True, exist_ok=True)
    network.write_text(
        "# written by rave-staging: the instance bridge only; egress via its proxy\n"
        f"[Match]\nMACAddress={vm.mac}\n\n"
        f"[Network]\nAddress={vm.address}/24\nGateway={inst.gateway}\n"
        # the instance's on-link IPv6 /64 like the containers: no IPv6 gateway, no RA
        f"Address={vm.address6}/64\nLinkLocalAddressing=ipv6\nIPv6AcceptRA=no\n"
    )
    st.run("chroot", str(root), "systemctl", "enable", "systemd-networkd.service")


def build_disk(vm: VmHost, lower: Path) -> None:
    """A fresh ext4 disk: overlay on the cached VM root, provision, mkfs.ext4 -d, unmount."""
    st.log(f"{vm.name}: making its disk ({VM_DISK_SIZE}, sparse) ...")
    started = time.monotonic()
    shutil.rmtree(vm.upper, ignore_errors=True)
    shutil.rmtree(vm.work, ignore_errors=True)
    for path in (vm.upper, vm.work, vm.root):
        path.mkdir(parents=True, exist_ok=True)
    options = f"lowerdir={lower},upperdir={vm.upper},workdir={vm.work}"
    st.run("mount", "-t", "overlay", "overlay", "-o", options, str(vm.root))
    temp = vm.disk.with_name(".disk.img.tmp")
    try:
        st.provision(vm)
        provision_vm(vm)
        # the instance's apt cache, so a deploy downloads only what no host fetched before
        st._link_debs(inst_archives(vm), vm.root / "var/cache/apt/archives")
        temp.unlink(missing_ok=True)
        st.run(
            "mkfs.ext4", "-q", "-F", "-L", "rave-root", "-d", str(vm.root), str(temp),
            VM_DISK_SIZE, timeout=900,
        )  # fmt: skip
    finally:
        st.unmount_root(vm)
        shutil.rmtree(vm.upper, ignore_errors=True)
        shutil.rmtree(vm.work, ignore_errors=True)
    temp.replace(vm.disk)
    (vm.dir / "disk-recipe").write_text(VM_RECIPE + "\n")
    st.log(f"{vm.name}: disk ready in {time.monotonic() - started:.0f}s")


def inst_archives(vm: VmHost) -> Path:
    return vm.instance.apt_archives


def disk_current(vm: VmHost) -> bool:
    try:
        recipe = (vm.dir / "disk-recipe").read_text().strip()
    except OSError:
        return False
    return vm.disk.exists() and recipe == VM_RECIPE


# -- network ----------------------------------------------------------------------------------
def setup_tap(vm: VmHost) -> None:
    """A fresh tap on the instance's bridge (a stale one of a killed session is replaced)."""
    teardown_tap(vm)
    st.run("ip", "tuntap", "add", "dev", vm.tap, "mode", "tap")
    st.run("ip", "link", "set", vm.tap, "master", vm.instance.bridge, "up")
    st.run("ip", "neigh", "flush", "to", vm.address, "dev", vm.instance.bridge, check=False)


def teardown_tap(vm: VmHost) -> None:
    if st.link_exists(vm.tap):
        st.run("ip", "link", "del", vm.tap, check=False)


# -- qemu -------------------------------------------------------------------------------------
def qemu_command(vm: VmHost, accel: str, kernel: Path, initrd: Path) -> list[str]:
    return [
        "qemu-system-x86_64",
        "-name", vm.qemu_name,
        "-machine", "q35",
        "-accel", "kvm" if accel == "kvm" else "tcg,thread=multi",
        "-cpu", "host" if accel == "kvm" else "max",
        "-smp", str(VM_CPUS),
        "-m", str(VM_MEMORY_MB),
        "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
        "-no-reboot",  # a guest reboot or panic ends qemu: `vm up` boots it again
        "-kernel", str(kernel),
        "-initrd", str(initrd),
        "-append", KERNEL_CMDLINE,
        "-drive", f"file={vm.disk},format=raw,if=virtio,cache=unsafe",
        "-netdev", f"tap,id=net0,ifname={vm.tap},script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=net0,mac={vm.mac}",
        "-device", "virtio-rng-pci",
        "-chardev", f"file,id=console,path={vm.console},append=on",
        "-serial", "chardev:console",
    ]  # fmt: skip


def start_qemu(vm: VmHost, accel: str, kernel: Path, initrd: Path) -> int:
    with open(vm.console, "ab") as out:
        header = f"\n==== {time.strftime('%F %T')} starting {vm.machine} ({accel}) ====\n"
        out.write(header.encode())
    log_file = vm.dir / "qemu.log"
    with open(log_file, "ab") as out:
        process = subprocess.Popen(
            qemu_command(vm, accel, kernel, initrd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while process.poll() is None and time.monotonic() < deadline:
        if vm.qemu_name in st.cmdline(process.pid):
            break
        time.sleep(0.05)
    st.atomic_write(vm.pidfile, f"{process.pid}\n")
    return process.pid


def stop_qemu(vm: VmHost, clean: bool = True) -> None:
    """A clean poweroff of the guest (SIGTERM makes qemu quit at once: the guest would see a
    power cut), then SIGTERM/SIGKILL; clean=False when the disk is thrown away anyway."""
    pid = vm.pid()
    if pid:
        poweroff = "sudo systemctl --no-block poweroff"
        if clean and st.ssh_run(vm, poweroff, timeout=10).returncode == 0:
            st.wait_gone(pid, st.STOP_TIMEOUT)
        st.terminate(pid)
    # a qemu of this instance whose pidfile is gone (killed session, deleted state)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and vm.qemu_name in st.cmdline(int(entry.name)):
            st.terminate(int(entry.name))
    vm.pidfile.unlink(missing_ok=True)


def kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def accel_cache() -> Path:
    return st.CACHE_DIR / "vm-accel.json"


def probe_key(kernel: Path) -> str:
    return f"{platform.release()} {kernel.name}"


def cached_accel(kernel: Path) -> str | None:
    try:
        data = json.loads(accel_cache().read_text())
    except (OSError, ValueError):
        return None
    value = data.get(probe_key(kernel))
    return value if value in ("kvm", "tcg") else None


def remember_accel(kernel: Path, accel: str, why: str) -> None:
    path = accel_cache()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data[probe_key(kernel)] = accel
    data[f"{probe_key(kernel)} why"] = why
    st.atomic_write(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def console_size(vm: VmHost) -> int:
    try:
        return vm.console.stat().st_size
    except OSError:
        return 0


def boot(vm: VmHost, kernel: Path, initrd: Path) -> str:
    """Start qemu with KVM if it boots this kernel here, else TCG; return the one used."""
    forced = os.environ.get("RAVE_STAGING_VM_ACCEL", "")
    if forced and forced not in ("kvm", "tcg"):
        raise st.StagingError(f"RAVE_STAGING_VM_ACCEL must be kvm or tcg, got {forced!r}")
    accel = forced or cached_accel(kernel)
    if accel is None and not kvm_usable():
        accel = "tcg"
        remember_accel(kernel, accel, "/dev/kvm is not usable")
    if accel is None:
        # /dev/kvm may exist and qemu start without the guest ever running (no vmx/svm: e.g. a
        # PVM host kernel, which boots only PVM guest kernels): wait for the kernel's banner
        before = console_size(vm)
        pid = start_qemu(vm, "kvm", kernel, initrd)
        deadline = time.monotonic() + KVM_PROBE_SECONDS
        while time.monotonic() < deadline and st.pid_alive(pid):
            if b"Linux version" in vm.console.read_bytes()[before:]:
                break
            time.sleep(0.5)
        if st.pid_alive(pid) and b"Linux version" in vm.console.read_bytes()[before:]:
            remember_accel(kernel, "kvm", "the guest kernel booted under KVM")
            return "kvm"
        why = (
            "qemu -accel kvm exited"
            if not st.pid_alive(pid)
            else f"no kernel output under KVM within {KVM_PROBE_SECONDS:.0f}s"
        )
        st.log(f"{vm.name}: KVM unusable here ({why}); using TCG (software emulation)")
        st.terminate(pid)
        remember_accel(kernel, "tcg", why)
        accel = "tcg"
    start_qemu(vm, accel, kernel, initrd)
    return accel


# -- state files ------------------------------------------------------------------------------
def container_hosts(inst: st.Instance) -> list[st.Host]:
    """The containers recorded in hosts.json (the ssh files list them next to the VM)."""
    try:
        entries = json.loads(inst.hosts_json.read_text())
    except (OSError, ValueError):
        return []
    return [inst.host(int(e["name"].rsplit("-", 1)[1])) for e in entries]


def write_vm_state(vm: VmHost, accel: str | None) -> None:
    entry = {
        "name": vm.name,
        "address": vm.address,
        "address6": vm.address6,
        "tap": vm.tap,
        "disk": str(vm.disk),
        "machine": vm.machine,
        "pid": vm.pid(),
        "accel": accel,
    }
    st.atomic_write(vm.json_file, json.dumps([entry], indent=2) + "\n")


def vm_entries(inst: st.Instance) -> list[st.Host]:
    """The VM, for the ssh files, if this instance has one (its host key exists)."""
    vm = vm_host(inst)
    return [vm] if vm.host_key.exists() and vm.json_file.exists() else []


# -- commands ---------------------------------------------------------------------------------
def cmd_vm_up(inst: st.Instance, fresh: bool) -> None:
    with inst.locked():
        st.check_instance_id(inst)
        started = time.monotonic()
        vm = vm_host(inst)
        lower = ensure_vm_root()
        kernel, initrd = kernel_files(lower)
        st.ensure_operator_key(inst)
        st.ensure_bridge(inst)
        st.ensure_proxy(inst)
        vm.dir.mkdir(parents=True, exist_ok=True)
        st.ensure_host_key(vm)
        accel = None
        if vm.pid() and st.link_exists(vm.tap) and not fresh:
            accel = vm.accel_file.read_text().strip() if vm.accel_file.exists() else None
        else:
            stop_qemu(vm, clean=not fresh)  # a killed session's qemu, or the VM for --fresh
            st.unmount_root(vm)  # an interrupted disk build
            if fresh or not disk_current(vm):
                if vm.disk.exists() and not fresh:
                    st.log(f"{vm.name}: the cached VM root changed; its disk is rebuilt")
                build_disk(vm, lower)
            setup_tap(vm)
            if fresh:
                vm.console.unlink(missing_ok=True)
            write_vm_state(vm, None)
            st.write_ssh_files(inst, [*container_hosts(inst), vm])
            accel = boot(vm, kernel, initrd)
            st.atomic_write(vm.accel_file, f"{accel}\n")
            st.log(f"booting {vm.name} ({accel}) ...")
            st.wait_for_boot([vm], booting=[vm], timeout=VM_BOOT_TIMEOUT)
        write_vm_state(vm, accel)
        st.write_ssh_files(inst, [*container_hosts(inst), vm])
        # the VM becomes a recipient of the staging secrets like a container, so the full
        # deploy.py (not only base + hardening) can run on it (bench/soak.py)
        st.secrets_hook(inst, [vm])
    st.log(f"{vm.name} up ({accel}) in {time.monotonic() - started:.1f}s")
    print_vm_info(inst)


def teardown_vm(inst: st.Instance) -> None:
    """Stop the VM and remove its tap (its disk and host key stay: `vm up` boots it again)."""
    vm = vm_host(inst)
    stop_qemu(vm)
    st.unmount_root(vm)
    teardown_tap(vm)
    vm.json_file.unlink(missing_ok=True)


def cmd_vm_down(inst: st.Instance) -> None:
    with inst.locked():
        teardown_vm(inst)
        # the bridge and proxy serve the containers too: removed only when none of them runs
        if not any(inst.host(i).pid() for i in inst.known_indices()):
            st.teardown_network(inst)
        if inst.ssh_config.exists():
            st.write_ssh_files(inst, container_hosts(inst))
    st.log("vm down")


def vm_status(inst: st.Instance) -> dict[str, object]:
    vm = vm_host(inst)
    pid = vm.pid()
    accel = vm.accel_file.read_text().strip() if vm.accel_file.exists() else None
    return {
        "name": vm.name,
        "address": vm.address,
        "pid": pid,
        "running": bool(pid),
        "accel": accel if pid else None,
        "tap": st.link_exists(vm.tap),
        "disk": vm.disk.exists(),
        "ssh": bool(pid) and st.ssh_ok(vm),
    }


def cmd_vm_status(inst: st.Instance, as_json: bool) -> int:
    status = vm_status(inst)
    if as_json:
        print(json.dumps({"instance": inst.id, "vm": status}, indent=2))
    else:
        state = f"running ({status['accel']})" if status["running"] else "stopped"
        print(
            f"instance {inst.id}: {status['name']} {status['address']} {state} "
            f"ssh={'ok' if status['ssh'] else 'no'}"
        )
    return 0 if status["ssh"] else 1


def print_vm_info(inst: st.Instance) -> None:
    vm = vm_host(inst)
    rel = os.path.relpath(inst.ssh_config)
    print(f"staging instance {inst.id} VM:")
    print(f"  {vm.name}  {vm.address}   ssh -F {rel} {vm.name}")
    print(f"  egress proxy: {inst.proxy_url}")
    print("  deploy: .venv/bin/pyinfra -y inventories/staging_vm.py deploy.py")
