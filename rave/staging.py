"""Local staging hosts: Debian 12 systemd-nspawn containers in their own network namespaces.

One *instance* (``RAVE_STAGING_ID=<n>``, default 0) owns:

- the state directory ``.staging/`` of the checkout (override: ``RAVE_STAGING_DIR``),
- the bridge ``rvbr<n>`` with ``10.213.<n>.1/24`` and a tinyproxy on ``10.213.<n>.1:3128``
  (the hosts' only way out: no NAT, no forwarding),
- the same bridge with ``fd52:a7e0:<n>::1/64`` (a unique local IPv6 prefix per instance, no
  route beyond the bridge: it only lets the control machine reach the hosts over IPv6),
- per host k (1..N): netns ``rv<n>-h<k>``, veth ``rv<n>h<k>`` (peer ``eth0`` inside, addresses
  ``10.213.<n>.<10+k>`` and ``fd52:a7e0:<n>::<10+k>``), an overlay (lower: the cached bookworm
  root, upper/work under ``.staging/hosts/<k>/``) mounted at ``.staging/hosts/<k>/root`` and a
  ``systemd-nspawn -b`` booting it.

The bookworm root is built once per machine with debootstrap under /var/cache/rave-staging and
shared read-only by every instance. Everything an instance starts is named after its ID, so
``up`` can find and clear leftovers of a killed session (netns, links, mounts, processes) and
``down`` removes exactly what ``up`` made. See docs/adr/0002-nspawn-staging.md.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CACHE_DIR = Path(os.environ.get("RAVE_STAGING_CACHE", "/var/cache/rave-staging"))
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
ROOT_PACKAGES = "systemd,systemd-sysv,dbus,openssh-server,python3,sudo,ca-certificates"
# Bump when the recipe of the cached root changes: a root with another marker is rebuilt.
ROOT_RECIPE = f"1 {SUITE} minbase {ROOT_PACKAGES}"
ROOT_MARKER = ".rave-staging-root"
PROVISIONED_MARKER = "var/lib/rave-staging/provisioned"
PROXY_PORT = 3128
OPERATOR = "agent"
OPERATOR_GROUP = "rave-ssh"
BOOT_TIMEOUT = float(os.environ.get("RAVE_STAGING_BOOT_TIMEOUT", "240"))
STOP_TIMEOUT = 30.0
MAX_HOSTS = 12  # addresses .11-.22; keeps interface names short (bench: 10 hosts)
# Unique local IPv6 (RFC 4193) for the bridge and the hosts: fd52:a7e0:<n>::/64 per instance,
# written with the same digits as the IPv4 subnet (10.213.4.11 <-> fd52:a7e0:4::11). On-link
# only: no default route, no forwarding, so nothing beyond the bridge is ever reached over it.
IPV6_PREFIX = "fd52:a7e0"


class StagingError(Exception):
    """A failure an operator can act on; main() prints it without a traceback."""


def log(message: str) -> None:
    print(f"rave-staging: {message}", file=sys.stderr, flush=True)


def run(
    *args: str, check: bool = True, capture: bool = True, timeout: float | None = 120
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(args), text=True, capture_output=capture, check=False, timeout=timeout
    )
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout or "").strip() if capture else ""
        raise StagingError(f"command failed ({result.returncode}): {' '.join(args)}\n{detail}")
    return result


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def instance_id() -> int:
    raw = os.environ.get("RAVE_STAGING_ID", "0")
    try:
        value = int(raw)
    except ValueError:
        raise StagingError(f"RAVE_STAGING_ID must be an integer 0-254, got {raw!r}") from None
    if not 0 <= value <= 254:
        raise StagingError(f"RAVE_STAGING_ID must be 0-254, got {value}")
    return value


def pid_alive(pid: int | None) -> bool:
    if not pid or pid <= 0:
        return False
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def is_mounted(path: Path) -> bool:
    target = str(path.resolve()) if path.exists() else str(path)
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return False
    return any(line.split()[4] == target for line in lines)


@dataclass(frozen=True)
class Host:
    index: int
    instance: Instance

    @property
    def name(self) -> str:
        return f"rave-staging-{self.index}"

    @property
    def machine(self) -> str:
        return f"rave-staging-{self.instance.id}-{self.index}"

    @property
    def address(self) -> str:
        return f"{self.instance.subnet}.{10 + self.index}"

    @property
    def address6(self) -> str:
        return self.instance.ipv6(10 + self.index)

    @property
    def netns(self) -> str:
        return f"rv{self.instance.id}-h{self.index}"

    @property
    def veth(self) -> str:
        return f"rv{self.instance.id}h{self.index}"

    @property
    def dir(self) -> Path:
        return self.instance.state / "hosts" / str(self.index)

    @property
    def root(self) -> Path:
        return self.dir / "root"

    @property
    def upper(self) -> Path:
        return self.dir / "upper"

    @property
    def work(self) -> Path:
        return self.dir / "work"

    @property
    def pidfile(self) -> Path:
        return self.dir / "nspawn.pid"

    @property
    def console(self) -> Path:
        return self.dir / "console.log"

    @property
    def host_key(self) -> Path:
        # outside the upper layer: a reset keeps the host's identity (known_hosts, age recipient)
        return self.dir / "ssh_host_ed25519_key"

    @property
    def image_file(self) -> Path:
        # {"root": ..., "recipe": ...}: the host boots an overlay of this image (`up --image`)
        return self.dir / "image.json"

    def image(self) -> dict[str, str] | None:
        try:
            data: dict[str, str] = json.loads(self.image_file.read_text())
        except (OSError, ValueError):
            return None
        return data

    def host_public_key(self) -> str:
        parts = Path(f"{self.host_key}.pub").read_text().split()
        return f"{parts[0]} {parts[1]}"

    def pid(self) -> int | None:
        pid = read_pid(self.pidfile)
        if pid and pid_alive(pid) and f"--machine={self.machine}" in cmdline(pid):
            return pid
        return None


class Instance:
    def __init__(self, ident: int, state: Path | None = None):
        self.id = ident
        if state is None:
            configured = os.environ.get("RAVE_STAGING_DIR")
            state = Path(configured).expanduser() if configured else repo_root() / ".staging"
        self.state = state.resolve()

    # -- names ---------------------------------------------------------------------------
    @property
    def subnet(self) -> str:
        return f"10.213.{self.id}"

    @property
    def gateway(self) -> str:
        return f"{self.subnet}.1"

    def ipv6(self, last: int) -> str:
        """``fd52:a7e0:<n>::<last>`` in the canonical form `ip` prints (instance 0: fd52:a7e0::)."""
        return str(ipaddress.IPv6Address(f"{IPV6_PREFIX}:{self.id}::{last}"))

    @property
    def subnet6(self) -> str:
        return f"{self.ipv6(0)}/64"

    @property
    def gateway6(self) -> str:
        return self.ipv6(1)

    @property
    def bridge(self) -> str:
        return f"rvbr{self.id}"

    @property
    def proxy_url(self) -> str:
        return f"http://{self.gateway}:{PROXY_PORT}"

    @property
    def apt_archives(self) -> Path:
        return CACHE_DIR / f"apt-archives-{self.id}"

    @property
    def key(self) -> Path:
        return self.state / "id_ed25519"

    @property
    def ssh_config(self) -> Path:
        return self.state / "ssh_config"

    @property
    def known_hosts(self) -> Path:
        return self.state / "known_hosts"

    @property
    def hosts_json(self) -> Path:
        return self.state / "hosts.json"

    def inventory_data(self, address: str) -> dict[str, object]:
        """pyinfra host data for a host of this instance (containers and the VM alike)."""
        return {
            "ssh_hostname": address,
            "ssh_user": OPERATOR,
            "ssh_key": str(self.key),
            "ssh_known_hosts_file": str(self.known_hosts),
            "ssh_strict_host_key_checking": "yes",
            "_sudo": True,
        }

    @property
    def proxy_pidfile(self) -> Path:
        return self.state / "tinyproxy.pid"

    def host(self, index: int) -> Host:
        return Host(index, self)

    def known_indices(self) -> list[int]:
        """Hosts this instance has state for (a directory under hosts/)."""
        hosts_dir = self.state / "hosts"
        if not hosts_dir.is_dir():
            return []
        return sorted(int(p.name) for p in hosts_dir.iterdir() if p.name.isdigit())

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.state.mkdir(parents=True, exist_ok=True)
        with open(self.state / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield


# -- the cached root ---------------------------------------------------------------------------
def cached_root() -> Path:
    return CACHE_DIR / f"{SUITE}-root"


def root_ready(root: Path) -> bool:
    try:
        return (root / ROOT_MARKER).read_text().strip() == ROOT_RECIPE
    except OSError:
        return False


def ensure_cached_root() -> Path:
    """Build the shared bookworm root once (temp dir + atomic rename; a marker file)."""
    root = cached_root()
    if root_ready(root):
        return root
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another instance may be building it right now
        if root_ready(root):
            return root
        for tool in ("debootstrap", "systemd-nspawn", "tinyproxy"):
            if not shutil.which(tool):
                raise StagingError(f"{tool} is not installed: run `make system-deps`")
        temp = CACHE_DIR / f"{SUITE}-root.tmp-{os.getpid()}"
        for stale in CACHE_DIR.glob(f"{SUITE}-root.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        log(f"building the cached {SUITE} root with debootstrap (about a minute) ...")
        started = time.monotonic()
        result = run(
            "debootstrap",
            "--variant=minbase",
            f"--include={ROOT_PACKAGES}",
            SUITE,
            str(temp),
            MIRROR,
            check=False,
            timeout=1800,
        )
        if result.returncode != 0:
            shutil.rmtree(temp, ignore_errors=True)
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
            raise StagingError(f"debootstrap failed ({result.returncode}):\n{tail}")
        finish_root(temp)
        (temp / ROOT_MARKER).write_text(ROOT_RECIPE + "\n")
        if root.exists():  # an older recipe: set aside; delete it unless hosts still use it
            in_use = f"lowerdir={root}," in Path("/proc/self/mountinfo").read_text()
            old = CACHE_DIR / f"{SUITE}-root.old-{int(time.time())}"
            root.rename(old)
            if in_use:
                log(f"the previous root is still in use by running hosts: kept as {old}")
            else:
                shutil.rmtree(old, ignore_errors=True)
        temp.rename(root)
        log(f"cached root ready in {time.monotonic() - started:.0f}s: {root}")
    return root


def finish_root(root: Path) -> None:
    """Machine-neutral touches to a fresh debootstrap root."""
    # the control machine's CA bundle (the egress may re-sign TLS) and its local CAs
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if bundle.exists():
        shutil.copy2(bundle, root / "etc/ssl/certs/ca-certificates.crt")
    local_cas = Path("/usr/local/share/ca-certificates")
    if local_cas.is_dir():
        dest = root / "usr/local/share/ca-certificates"
        dest.mkdir(parents=True, exist_ok=True)
        for cert in local_cas.glob("*.crt"):
            shutil.copy2(cert, dest / cert.name)
    registry = Path("/etc/apt/apt.conf.d/99artifact-registry")
    if registry.exists():  # the mirror is a frozen snapshot: Check-Valid-Until false
        shutil.copy2(registry, root / "etc/apt/apt.conf.d/99artifact-registry")
    # every host gets its own identity at provisioning
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.is_symlink() or dbus_id.exists():
        dbus_id.unlink()
    # apt's downloaded .deb files stay (the archive directory is a shared cache)
    (root / "etc/apt/apt.conf.d/docker-clean").unlink(missing_ok=True)
    run("chroot", str(root), "apt-get", "clean", check=False)


# -- state files -----------------------------------------------------------------------------
def ensure_operator_key(inst: Instance) -> None:
    if not inst.key.exists():
        run(
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "rave-staging-operator",
            "-f",
            str(inst.key),
        )
    inst.key.chmod(0o600)


def ensure_host_key(host: Host) -> None:
    if not host.host_key.exists():
        host.dir.mkdir(parents=True, exist_ok=True)
        run(
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            f"root@{host.name}",
            "-f",
            str(host.host_key),
        )


def write_state_files(inst: Instance, hosts: list[Host]) -> None:
    entries = [
        {
            "name": host.name,
            "address": host.address,
            "address6": host.address6,
            "netns": host.netns,
            "root": str(host.root),
            "machine": host.machine,
            "pid": host.pid(),
        }
        for host in hosts
    ]
    atomic_write(inst.hosts_json, json.dumps(entries, indent=2) + "\n")
    from rave.staging_vm import vm_entries  # the instance's VM (rave-staging vm) keeps its entry

    write_ssh_files(inst, [*hosts, *vm_entries(inst)])


def write_ssh_files(inst: Instance, hosts: list[Host]) -> None:
    """ssh_config and known_hosts for these hosts (containers and the VM)."""
    config = []
    known = []
    for host in hosts:
        options = (
            f"    User {OPERATOR}\n"
            f"    IdentityFile {inst.key}\n"
            f"    IdentitiesOnly yes\n"
            f"    UserKnownHostsFile {inst.known_hosts}\n"
            f"    StrictHostKeyChecking yes\n"
            f"    BatchMode yes\n"
            f"    ConnectTimeout 5\n"
            f"    LogLevel ERROR\n"
        )
        config.append(f"Host {host.name} {host.address}\n    HostName {host.address}\n{options}")
        # the same host over IPv6: `ssh -F ssh_config fd52:a7e0:<n>::<10+k>`
        config.append(f"Host {host.address6}\n{options}")
        known.append(f"{host.name},{host.address},{host.address6} {host.host_public_key()}")
    atomic_write(inst.ssh_config, "\n".join(config))
    atomic_write(inst.known_hosts, "\n".join(known) + "\n")


def atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    temp.chmod(mode)
    temp.replace(path)


def check_instance_id(inst: Instance) -> None:
    """A state dir belongs to one instance ID; a stopped other instance's state is discarded."""
    marker = inst.state / "instance-id"
    if marker.exists():
        recorded = marker.read_text().strip()
        if recorded != str(inst.id):
            other = Instance(int(recorded), inst.state)
            running = [i for i in other.known_indices() if other.host(i).pid()]
            if running:
                raise StagingError(
                    f"{inst.state} belongs to staging instance {recorded} which is running; "
                    f"stop it first: RAVE_STAGING_ID={recorded} rave-staging down"
                )
            # only what lives in this state dir: the ID may belong to someone else by now, so
            # its netns, links and proxy are left alone (RAVE_STAGING_ID=<old> down clears them)
            log(f"discarding the state of stopped instance {recorded}")
            for index in other.known_indices():
                unmount_root(other.host(index))
            shutil.rmtree(inst.state / "hosts", ignore_errors=True)
            for name in ("hosts.json", "ssh_config", "known_hosts"):
                (inst.state / name).unlink(missing_ok=True)
    inst.state.mkdir(parents=True, exist_ok=True)
    atomic_write(marker, f"{inst.id}\n")


# -- network -----------------------------------------------------------------------------------
def link_exists(name: str) -> bool:
    return run("ip", "link", "show", "dev", name, check=False).returncode == 0


def netns_exists(name: str) -> bool:
    return Path(f"/run/netns/{name}").exists()


def ensure_bridge(inst: Instance) -> None:
    if not link_exists(inst.bridge):
        run("ip", "link", "add", inst.bridge, "type", "bridge")
    addresses = run("ip", "-4", "-o", "addr", "show", "dev", inst.bridge).stdout
    if f" {inst.gateway}/24 " not in addresses:
        run("ip", "addr", "add", f"{inst.gateway}/24", "dev", inst.bridge)
    ensure_ipv6_address(inst.bridge, inst.gateway6)
    run("ip", "link", "set", inst.bridge, "up")


def ensure_ipv6_address(device: str, address: str, netns: str | None = None) -> None:
    """The /64 address on the device (added once; a bridge or netns left by an older harness
    without IPv6 gets it too). nodad: the address is usable at once, and only we use the prefix."""
    ip = ("ip", "-n", netns) if netns else ("ip",)
    # IPv6 may be switched off for new interfaces (net.ipv6.conf.default.disable_ipv6=1)
    sysctl = f"net.ipv6.conf.{device}.disable_ipv6=0"
    if netns:
        run("ip", "netns", "exec", netns, "sysctl", "-q", "-w", sysctl)
    else:
        run("sysctl", "-q", "-w", sysctl)
    present = run(*ip, "-6", "-o", "addr", "show", "dev", device).stdout
    if f" {address}/64 " not in present:
        run(*ip, "addr", "add", f"{address}/64", "dev", device, "nodad")


def ensure_host_ipv6(host: Host) -> None:
    ensure_ipv6_address("eth0", host.address6, netns=host.netns)


def setup_host_network(host: Host) -> None:
    """A fresh netns + veth for the host (whatever was left is removed first)."""
    teardown_host_network(host)
    inst = host.instance
    run("ip", "netns", "add", host.netns)
    # fixed MACs: the control side's ARP entry stays right across resets and reboots
    mac = f"02:72:76:{inst.id:02x}:{host.index:02x}"
    run(
        "ip",
        "link",
        "add",
        host.veth,
        "address",
        f"{mac}:01",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "address",
        f"{mac}:02",
        "netns",
        host.netns,
    )
    run("ip", "neigh", "flush", "to", host.address, "dev", inst.bridge, check=False)
    run("ip", "-6", "neigh", "flush", "to", host.address6, "dev", inst.bridge, check=False)
    run("ip", "link", "set", host.veth, "master", inst.bridge, "up")
    ns = ("ip", "-n", host.netns)
    run(*ns, "link", "set", "lo", "up")
    run(*ns, "addr", "add", f"{host.address}/24", "dev", "eth0")
    run(*ns, "link", "set", "eth0", "up")
    run(*ns, "route", "add", "default", "via", inst.gateway)
    ensure_host_ipv6(host)  # on-link /64 only: no IPv6 default route


def teardown_host_network(host: Host) -> None:
    if netns_exists(host.netns):
        run("ip", "netns", "del", host.netns, check=False)
    if link_exists(host.veth):
        run("ip", "link", "del", host.veth, check=False)


def stray_indices(inst: Instance) -> set[int]:
    """Host numbers with a netns or veth named for this instance (e.g. left by a killed run)."""
    found: set[int] = set()
    netns_dir = Path("/run/netns")
    if netns_dir.is_dir():
        for entry in netns_dir.iterdir():
            match = re.fullmatch(rf"rv{inst.id}-h(\d+)", entry.name)
            if match:
                found.add(int(match.group(1)))
    links = run("ip", "-o", "link", "show", check=False).stdout
    for match in re.finditer(rf"^\d+: rv{inst.id}h(\d+)[@:]", links, re.MULTILINE):
        found.add(int(match.group(1)))
    return found


def teardown_network(inst: Instance) -> None:
    for index in stray_indices(inst):
        stop_container(inst.host(index))
        teardown_host_network(inst.host(index))
    stop_proxy(inst)
    if link_exists(inst.bridge):
        run("ip", "link", "del", inst.bridge, check=False)


# -- the egress proxy --------------------------------------------------------------------------
def proxy_pid(inst: Instance) -> int | None:
    pid = read_pid(inst.proxy_pidfile)
    if pid and pid_alive(pid) and any("tinyproxy" in part for part in cmdline(pid)):
        return pid
    return None


def ensure_proxy(inst: Instance) -> None:
    if proxy_pid(inst):
        return
    stop_proxy(inst)  # a stale instance still bound to the address
    conf = inst.state / "tinyproxy.conf"
    atomic_write(
        conf,
        "# written by rave-staging: the staging hosts' only egress\n"
        "User nobody\n"
        "Group nogroup\n"
        f"Listen {inst.gateway}\n"
        f"Port {PROXY_PORT}\n"
        "Timeout 600\n"
        "MaxClients 64\n"
        "LogLevel Notice\n"
        f"Allow {inst.subnet}.0/24\n"
        "ConnectPort 443\n"
        "DisableViaHeader Yes\n",
    )
    logfile = inst.state / "tinyproxy.log"
    with open(logfile, "ab") as out:
        process = subprocess.Popen(
            ["tinyproxy", "-d", "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    atomic_write(inst.proxy_pidfile, f"{process.pid}\n")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StagingError(f"tinyproxy exited ({process.returncode}); see {logfile}")
        if port_listening(inst.gateway, PROXY_PORT):
            return
        time.sleep(0.1)
    raise StagingError(f"tinyproxy does not listen on {inst.gateway}:{PROXY_PORT}; see {logfile}")


def port_listening(address: str, port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((address, port)) == 0


def stop_proxy(inst: Instance) -> None:
    pids = {p for p in [proxy_pid(inst)] if p}
    # a tinyproxy of a killed session (pidfile lost, or another checkout with this ID) that
    # still holds the instance's proxy address
    listeners = run(
        "ss", "-Hltnp", "src", inst.gateway, "sport", "=", f":{PROXY_PORT}", check=False
    ).stdout
    for match in re.finditer(r'\("tinyproxy",pid=(\d+),', listeners):
        pids.add(int(match.group(1)))
    for pid in pids:
        terminate(pid)
    inst.proxy_pidfile.unlink(missing_ok=True)


def terminate(pid: int, timeout: float = 5) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not wait_gone(pid, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_gone(pid, 5)


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    return not pid_alive(pid)


# -- hosts -------------------------------------------------------------------------------------
def mount_overlay(host: Host, lower: Path, lower_recipe: str = ROOT_RECIPE) -> None:
    for path in (host.upper, host.work, host.root):
        path.mkdir(parents=True, exist_ok=True)
    if is_mounted(host.root):
        return
    recipe = host.dir / "lower-recipe"
    if recipe.exists() and recipe.read_text().strip() != lower_recipe:
        log(f"{host.name}: its lower root (cached root or image) changed; its upper layer is wiped")
        shutil.rmtree(host.upper)
        shutil.rmtree(host.work)
        host.upper.mkdir()
        host.work.mkdir()
    recipe.write_text(lower_recipe + "\n")
    # the merged root takes the upper directory's mode: 0755 whatever the caller's umask (0700
    # would lock every account out of /, and sshd with it)
    host.upper.chmod(0o755)
    options = f"lowerdir={lower},upperdir={host.upper},workdir={host.work}"
    run("mount", "-t", "overlay", "overlay", "-o", options, str(host.root))


def unmount_root(host: Host) -> None:
    # the apt archive bind and the overlay; nested mounts first, lazily if still busy
    for _ in range(5):
        targets = [
            line.split()[4]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4] == str(host.root) or line.split()[4].startswith(f"{host.root}/")
        ]
        if not targets:
            return
        for target in sorted(targets, key=len, reverse=True):
            if run("umount", target, check=False).returncode != 0:
                run("umount", "-l", target, check=False)


def _ppid(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def container_pids(host: Host) -> set[int]:
    """Processes to SIGKILL so nothing runs in the host's netns: for a process of a container
    (another PID namespace) that is its namespace's init, found by walking up the parents to
    the last one outside our PID namespace; killing it kills the whole namespace."""
    if not netns_exists(host.netns):
        return set()
    listed = run("ip", "netns", "pids", host.netns, check=False).stdout.split()
    own_pidns = os.readlink("/proc/self/ns/pid")
    targets: set[int] = set()
    for raw in listed:
        pid: int | None = int(raw)
        child = None
        while pid and pid > 1:
            try:
                pidns = os.readlink(f"/proc/{pid}/ns/pid")
            except OSError:
                break
            if pidns == own_pidns:
                break
            child, pid = pid, _ppid(pid)
        if child is not None:
            targets.add(child)  # the container's init
        elif int(raw) != os.getpid():
            targets.add(int(raw))  # e.g. a systemd-nspawn that has joined the netns
    return targets


def stop_container(host: Host) -> None:
    """Orderly poweroff (SIGTERM makes nspawn send SIGRTMIN+3 to the container), then SIGKILL."""
    pid = host.pid()
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not wait_gone(pid, STOP_TIMEOUT):
            log(f"{host.name}: no clean poweroff within {STOP_TIMEOUT:.0f}s, killing it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_gone(pid, 5)
    # leftovers (a killed nspawn leaves its container running): kill each PID namespace's init
    for _ in range(3):
        leftovers = container_pids(host)
        if not leftovers:
            break
        for left in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(left, signal.SIGKILL)
        for left in leftovers:
            wait_gone(left, 10)
    host.pidfile.unlink(missing_ok=True)


def teardown_host(host: Host) -> None:
    stop_container(host)
    harvest_archives(host)
    unmount_root(host)
    teardown_host_network(host)


# Each host gets its own apt archive directory (apt locks it for a whole install, so one shared
# directory serialised parallel deploys to several hosts into lock errors). It is seeded from the
# instance's shared cache with hard links at start; what a host downloaded goes back at teardown.
def _link_debs(src: Path, dest: Path) -> None:
    if not src.is_dir():
        return
    dest.mkdir(parents=True, exist_ok=True)
    for deb in src.glob("*.deb"):
        target = dest / deb.name
        if target.exists():
            continue
        temp = dest / f".{deb.name}.tmp"
        temp.unlink(missing_ok=True)
        try:
            os.link(deb, temp)
        except OSError:
            shutil.copy2(deb, temp)
        temp.replace(target)


def seed_archives(host: Host) -> Path:
    own = host.dir / "apt-archives"
    (own / "partial").mkdir(parents=True, exist_ok=True)
    _link_debs(host.instance.apt_archives, own)
    return own


def harvest_archives(host: Host) -> None:
    _link_debs(host.dir / "apt-archives", host.instance.apt_archives)


def provision(host: Host) -> None:
    """First-boot identity, written into the upper layer once (reboots keep deploy changes).
    A host booted from an image (`up --image`) makes its own machine-id and SSH host key at
    its first boot, like a production image host; the harness only names it and gives the
    operator access, like a provider would."""
    root = host.root
    if (root / PROVISIONED_MARKER).exists():
        return
    inst = host.instance
    from_image = host.image() is not None
    (root / "etc/hostname").write_text(f"{host.name}\n")
    (root / "etc/hosts").write_text(
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{host.name}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    )
    if not from_image:
        (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
    # no DNS in staging: the proxy resolves names; an empty resolv.conf fails fast
    resolv = root / "etc/resolv.conf"
    if resolv.is_symlink():
        resolv.unlink()
    resolv.write_text("# rave-staging: no DNS here; egress only via the proxy\n")
    ssh_dir = root / "etc/ssh"
    for key in ssh_dir.glob("ssh_host_*"):
        key.unlink()
    if from_image:
        # the key the host makes at first boot replaces the one kept for this index
        host.host_key.unlink(missing_ok=True)
        Path(f"{host.host_key}.pub").unlink(missing_ok=True)
    else:
        shutil.copyfile(host.host_key, ssh_dir / "ssh_host_ed25519_key")
        os.chmod(ssh_dir / "ssh_host_ed25519_key", 0o600)
        shutil.copyfile(f"{host.host_key}.pub", ssh_dir / "ssh_host_ed25519_key.pub")
        os.chmod(ssh_dir / "ssh_host_ed25519_key.pub", 0o644)
    script = (
        "set -e\n"
        f"getent group {OPERATOR_GROUP} >/dev/null || groupadd --system {OPERATOR_GROUP}\n"
        f"id -u {OPERATOR} >/dev/null 2>&1 || "
        f"useradd --create-home --shell /bin/bash --groups {OPERATOR_GROUP} {OPERATOR}\n"
        f"install -d -m 700 -o {OPERATOR} -g {OPERATOR} /home/{OPERATOR}/.ssh\n"
    )
    run("chroot", str(root), "/bin/sh", "-c", script)
    auth = root / f"home/{OPERATOR}/.ssh/authorized_keys"
    auth.write_text(Path(f"{inst.key}.pub").read_text())
    uid_gid = run("chroot", str(root), "id", "-u", OPERATOR).stdout.strip()
    gid = run("chroot", str(root), "id", "-g", OPERATOR).stdout.strip()
    os.chown(auth, int(uid_gid), int(gid))
    auth.chmod(0o600)
    sudoers = root / f"etc/sudoers.d/{OPERATOR}"
    sudoers.write_text(f"{OPERATOR} ALL=(ALL:ALL) NOPASSWD: ALL\n")
    sudoers.chmod(0o440)
    # units that cannot work in a netns-only container without hardware or a uplink
    for unit in ("systemd-networkd-wait-online.service", "getty@tty1.service"):
        link = root / "etc/systemd/system" / unit
        if not link.exists() and not link.is_symlink():
            link.symlink_to("/dev/null")
    marker = root / PROVISIONED_MARKER
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{host.name} {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")


def cmd_pin_key(inst: Instance, index: int) -> None:
    """Pin the key the running host has now (after a restore brought back its earlier identity
    onto a host booted from an image, which had made a new key at first boot)."""
    with inst.locked():
        check_instance_id(inst)
        host = inst.host(select(inst, index, False)[0])
        if not host.pid():
            raise StagingError(f"{host.name} is not running")
        shutil.copyfile(host.root / "etc/ssh/ssh_host_ed25519_key.pub", f"{host.host_key}.pub")
        shutil.copyfile(host.root / "etc/ssh/ssh_host_ed25519_key", host.host_key)
        host.host_key.chmod(0o600)
        hosts = [inst.host(i) for i in inst.known_indices()]
        write_state_files(inst, hosts)
        secrets_hook(inst, hosts)
    log(f"{host.name}: pinned {host.host_public_key().split()[1][:16]}...")


def collect_host_key(host: Host, timeout: float = BOOT_TIMEOUT) -> None:
    """An image host's own key, made at its first boot: kept beside the host like a generated
    one (known_hosts, the staging secrets' recipient)."""
    made = host.root / "etc/ssh/ssh_host_ed25519_key.pub"
    deadline = time.monotonic() + timeout
    while not (made.exists() and made.read_text().strip()):
        if not host.pid():
            raise StagingError(
                f"{host.name}: exited before it made its host key; console log "
                f"{host.console}:\n{console_tail(host)}"
            )
        if time.monotonic() > deadline:
            raise StagingError(
                f"{host.name}: no host key after {timeout:.0f}s (rave-host-identity.service); "
                f"console log {host.console}:\n{console_tail(host)}"
            )
        time.sleep(0.5)
    time.sleep(0.5)  # ssh-keygen writes the private key first, the public one last
    shutil.copyfile(made, f"{host.host_key}.pub")
    shutil.copyfile(host.root / "etc/ssh/ssh_host_ed25519_key", host.host_key)
    host.host_key.chmod(0o600)


def start_container(host: Host) -> int:
    inst = host.instance
    inst.apt_archives.mkdir(parents=True, exist_ok=True)
    archives = seed_archives(host)
    command = [
        "systemd-nspawn",
        "--boot",
        f"--directory={host.root}",
        f"--machine={host.machine}",
        f"--hostname={host.name}",
        "--register=no",
        "--keep-unit",
        f"--network-namespace-path=/run/netns/{host.netns}",
        "--capability=CAP_NET_ADMIN",
        f"--bind={archives}:/var/cache/apt/archives",
        "--resolv-conf=off",
        "--timezone=off",
        "--link-journal=no",
        "--console=read-only",
    ]
    env = dict(os.environ, SYSTEMD_NSPAWN_API_VFS_WRITABLE="network")
    with open(host.console, "ab") as out:
        out.write(f"\n==== {time.strftime('%F %T')} starting {host.machine} ====\n".encode())
        out.flush()
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=env,
            start_new_session=True,
        )
    # Until the child has exec'd, /proc/PID/cmdline is still ours and Host.pid() would take
    # the booting host for dead: wait for nspawn's own command line (or for it to exit).
    deadline = time.monotonic() + 30
    while process.poll() is None and time.monotonic() < deadline:
        if f"--machine={host.machine}" in cmdline(process.pid):
            break
        time.sleep(0.05)
    atomic_write(host.pidfile, f"{process.pid}\n")
    return process.pid


def ssh_run(host: Host, command: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [
                "ssh",
                "-F",
                str(host.instance.ssh_config),
                "-o",
                "ConnectTimeout=3",
                host.name,
                command,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess([], 255, "", f"timed out after {timeout:.0f}s")


def ssh_ok(host: Host) -> bool:
    return ssh_run(host, "true").returncode == 0


def console_tail(host: Host, lines: int = 30) -> str:
    try:
        text = host.console.read_text(errors="replace")
    except OSError:
        return "(no console log)"
    return "\n".join(text.splitlines()[-lines:])


def wait_for_boot(hosts: list[Host], booting: list[Host], timeout: float = BOOT_TIMEOUT) -> None:
    """Until sshd answers on every host, then until each booting one has finished booting (the
    units that start at boot, e.g. deployed services after a reboot, are up or have failed)."""
    deadline = time.monotonic() + timeout
    pending = list(hosts)
    while pending:
        for host in list(pending):
            if not host.pid():
                raise StagingError(
                    f"{host.name}: its systemd-nspawn (or qemu) exited during boot; console log "
                    f"{host.console}:\n{console_tail(host)}"
                )
            if ssh_ok(host):
                pending.remove(host)
        if pending and time.monotonic() > deadline:
            host = pending[0]
            raise StagingError(
                f"{host.name}: sshd on {host.address} did not answer within {timeout:.0f}s; "
                f"console log {host.console}:\n{console_tail(host)}"
            )
        if pending:
            time.sleep(1)
    for host in booting:
        remaining = max(deadline - time.monotonic(), 5)
        state = ssh_run(host, "systemctl is-system-running --wait", timeout=remaining)
        status = state.stdout.strip()
        if status == "degraded":
            failed = ssh_run(host, "systemctl --failed --no-legend --plain").stdout.strip()
            log(f"{host.name}: booted degraded; failed units:\n{failed}")
        elif status != "running":
            raise StagingError(
                f"{host.name}: did not finish booting within {timeout:.0f}s "
                f"({status or state.stderr.strip()}); console log {host.console}:\n"
                f"{console_tail(host)}"
            )


def bring_up(inst: Instance, indices: list[int]) -> list[Host]:
    """Start every listed host that is not running; clear whatever a dead session left."""
    lower = ensure_cached_root()
    ensure_operator_key(inst)
    ensure_bridge(inst)
    ensure_proxy(inst)
    hosts = [inst.host(i) for i in indices]
    for stray in stray_indices(inst) - set(indices):
        log(f"removing leftovers of {inst.host(stray).netns}")
        stop_container(inst.host(stray))
        teardown_host_network(inst.host(stray))
    starting = []
    for host in hosts:
        image = host.image()
        if image is None:
            ensure_host_key(host)
        if host.pid() and netns_exists(host.netns):
            ensure_host_ipv6(host)  # a host booted by a harness without IPv6 gets it now
            continue
        teardown_host(host)  # stale netns, veth, mounts, processes of a killed session
        if image is None:
            mount_overlay(host, lower)
        else:
            mount_overlay(host, Path(image["root"]), image["recipe"])
        provision(host)
        setup_host_network(host)
        start_container(host)
        if image is not None and not host.host_key.exists():
            collect_host_key(host)
        starting.append(host)
    write_state_files(inst, hosts)
    if starting:
        log("booting " + ", ".join(h.name for h in starting) + " ...")
    wait_for_boot(hosts, booting=starting)
    write_state_files(inst, hosts)
    secrets_hook(inst, hosts)
    return hosts


def secrets_hook(inst: Instance, hosts: list[Host]) -> None:
    """Let the secrets helper set up the staging environment once host keys are known."""
    try:
        module = importlib.import_module("rave.secrets.staging")
    except ModuleNotFoundError as error:
        if error.name in ("rave.secrets", "rave.secrets.staging"):
            return  # not there (yet): nothing to do
        raise
    keys = {host.name: host.host_public_key() for host in hosts}
    module.ensure_staging_environment(inst.state, keys)


# -- commands ----------------------------------------------------------------------------------
def wipe_host(host: Host) -> None:
    teardown_host(host)
    shutil.rmtree(host.upper, ignore_errors=True)
    shutil.rmtree(host.work, ignore_errors=True)
    host.console.unlink(missing_ok=True)


def cmd_up(
    inst: Instance, count: int | None, fresh: bool = False, image: Path | None = None
) -> None:
    existing = inst.known_indices()
    if count is None:
        count = max(len(existing), 1)
    if not 1 <= count <= MAX_HOSTS:
        raise StagingError(f"--hosts must be 1-{MAX_HOSTS}")
    with inst.locked():
        check_instance_id(inst)
        # hosts beyond the requested count are stopped (their state stays)
        for index in inst.known_indices():
            if index > count:
                teardown_host(inst.host(index))
                shutil.rmtree(inst.host(index).dir, ignore_errors=True)
        started = time.monotonic()
        if fresh:
            for index in inst.known_indices():
                wipe_host(inst.host(index))
                inst.host(index).image_file.unlink(missing_ok=True)
        if image is not None:
            set_image(inst, list(range(1, count + 1)), image)
        hosts = bring_up(inst, list(range(1, count + 1)))
    log(f"{len(hosts)} host(s) up in {time.monotonic() - started:.1f}s")
    print_info(inst)


def set_image(inst: Instance, indices: list[int], tarball: Path) -> None:
    """Boot these hosts from a RAVE image (rave-staging image build) instead of the cached
    root; a host whose upper layer was made on another root is wiped by mount_overlay."""
    from rave.image import extract_root

    if not tarball.is_file():
        raise StagingError(f"no image at {tarball}")
    log(f"unpacking the image {tarball} (once per image) ...")
    root, recipe = extract_root(tarball, CACHE_DIR / "images")
    for index in indices:
        host = inst.host(index)
        host.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(host.image_file, json.dumps({"root": str(root), "recipe": recipe}) + "\n")


def cmd_down(inst: Instance) -> None:
    from rave.staging_vm import teardown_vm

    with inst.locked():
        teardown_vm(inst)  # its tap is on the bridge that goes away below
        for index in inst.known_indices():
            teardown_host(inst.host(index))
        teardown_network(inst)
        inst.hosts_json.unlink(missing_ok=True)
    log("down")


def select(inst: Instance, host: int | None, all_hosts: bool) -> list[int]:
    known = inst.known_indices()
    if not known:
        raise StagingError("no staging hosts yet: run `rave-staging up` first")
    if host is not None:
        if host not in known:
            raise StagingError(f"no staging host {host} (known: {known or 'none'})")
        return [host]
    return known  # --all, or no --host: every host


def cmd_reset(inst: Instance, host: int | None, all_hosts: bool) -> None:
    with inst.locked():
        check_instance_id(inst)
        indices = select(inst, host, all_hosts)
        started = time.monotonic()
        for index in indices:
            wipe_host(inst.host(index))
        bring_up(inst, sorted(set(inst.known_indices()) | set(indices)))
    log(f"reset {indices} in {time.monotonic() - started:.1f}s")


def cmd_reboot(inst: Instance, host: int | None) -> None:
    with inst.locked():
        check_instance_id(inst)
        indices = select(inst, host, host is None)
        started = time.monotonic()
        for index in indices:
            target = inst.host(index)
            stop_container(target)
        bring_up(inst, inst.known_indices())
    log(f"rebooted {indices} in {time.monotonic() - started:.1f}s")


def host_status(host: Host) -> dict[str, object]:
    pid = host.pid()
    return {
        "name": host.name,
        "address": host.address,
        "pid": pid,
        "running": bool(pid),
        "mounted": is_mounted(host.root),
        "netns": netns_exists(host.netns),
        "ssh": bool(pid) and ssh_ok(host),
    }


def cmd_status(inst: Instance, as_json: bool) -> int:
    statuses = [host_status(inst.host(i)) for i in inst.known_indices()]
    proxy = proxy_pid(inst)
    if as_json:
        print(json.dumps({"instance": inst.id, "proxy_pid": proxy, "hosts": statuses}, indent=2))
    else:
        print(
            f"instance {inst.id}: bridge {inst.bridge} "
            f"{'up' if link_exists(inst.bridge) else 'absent'}, "
            f"proxy {inst.proxy_url} {'running' if proxy else 'stopped'}"
        )
        for status in statuses:
            state = "running" if status["running"] else "stopped"
            print(
                f"  {status['name']} {status['address']} {state} "
                f"ssh={'ok' if status['ssh'] else 'no'}"
            )
        if not statuses:
            print("  no hosts (rave-staging up)")
    return 0 if statuses and all(s["ssh"] for s in statuses) else 1


# where the logins of the routes come from: the secret's name, never its value (the user of
# the CCR page is rave.secrets.generate.CCR_UI_USER; tests/unit/test_staging.py checks it)
ROUTE_LOGINS = {
    "ccr": "basic auth: user rave, password `.venv/bin/rave-secrets get ccr_ui_password "
    "--env staging` (secret ccr_ui_password; nginx checks ccr_ui_password_hash)",
    "grafana": "user admin, password `.venv/bin/rave-secrets get grafana_admin_password "
    "--env staging` (secret grafana_admin_password)",
}


def route_lines(address: str) -> list[str]:
    """What a person opens next: the URL of every route on the TLS port (rave/components.py),
    and where each login comes from."""
    from rave.components import COMPONENTS, Exposure, component

    port = next(p.number for p in component("nginx").ports if p.exposure is Exposure.PUBLIC)
    lines = [f"https://{address}:{port}/  status page (self-signed certificate)"]
    for c in COMPONENTS:
        entries = [(c.route, "")] if c.route is not None else []
        entries += [(route, f" (called by the {c.name} page)") for route in c.extra_routes]
        for route, note in entries:
            methods = f" ({', '.join(route.methods)} only)" if route.methods else ""
            optional = " (if installed)" if c.optional else ""
            lines.append(f"https://{address}:{port}{route.path}  {c.name}{methods}{optional}{note}")
            if route is c.route and c.name in ROUTE_LOGINS:
                lines.append(f"    login: {ROUTE_LOGINS[c.name]}")
    return lines


def print_info(inst: Instance) -> None:
    rel = os.path.relpath(inst.ssh_config)
    print(f"staging instance {inst.id} (state {inst.state}):")
    indices = inst.known_indices()
    for index in indices:
        host = inst.host(index)
        print(f"  {host.name}  {host.address}   ssh -F {rel} {host.name}")
    print(f"  egress proxy: {inst.proxy_url}")
    print("  deploy: .venv/bin/pyinfra -y inventories/staging.py deploy.py")
    for index in indices:
        host = inst.host(index)
        print(f"  open on {host.name} (from this machine):")
        for line in route_lines(host.address):
            print(f"    {line}")


def vm_command(inst: Instance, args: argparse.Namespace) -> int:
    from rave import staging_vm

    if args.vm_command == "up":
        staging_vm.cmd_vm_up(inst, args.fresh)
    elif args.vm_command == "down":
        staging_vm.cmd_vm_down(inst)
    elif args.vm_command == "status":
        return staging_vm.cmd_vm_status(inst, args.json)
    elif args.vm_command == "info":
        staging_vm.print_vm_info(inst)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rave-staging", description="local systemd-nspawn staging hosts (RAVE_STAGING_ID)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="boot the staging hosts (no-op for running ones)")
    up.add_argument("--hosts", type=int, default=None, help="number of hosts (default: 1)")
    up.add_argument("--fresh", action="store_true", help="wipe every host's changes first")
    up.add_argument(
        "--image",
        type=Path,
        default=os.environ.get("RAVE_STAGING_IMAGE") or None,
        help="boot from this RAVE image tarball (default $RAVE_STAGING_IMAGE; docs/image.md)",
    )
    sub.add_parser("down", help="stop everything this instance started")
    reset = sub.add_parser("reset", help="wipe a host's changes and boot it fresh")
    group = reset.add_mutually_exclusive_group()
    group.add_argument("--host", type=int)
    group.add_argument("--all", action="store_true")
    reboot = sub.add_parser("reboot", help="restart host(s), keeping their changes")
    reboot.add_argument("--host", type=int)
    pin = sub.add_parser("pin-key", help="pin a host's current SSH host key (docs/image.md)")
    pin.add_argument("--host", type=int, required=True)
    status = sub.add_parser("status", help="what runs (exit 1 unless every host answers ssh)")
    status.add_argument("--json", action="store_true")
    sub.add_parser("info", help="how to reach the hosts")
    vm = sub.add_parser("vm", help="a QEMU VM on the instance's bridge (docs/staging.md)")
    vm_sub = vm.add_subparsers(dest="vm_command", required=True)
    vm_up = vm_sub.add_parser("up", help="boot the VM (no-op if running)")
    vm_up.add_argument("--fresh", action="store_true", help="rebuild its disk first")
    vm_sub.add_parser("down", help="stop the VM, remove its tap (its disk stays)")
    vm_status = vm_sub.add_parser("status", help="what runs (exit 1 unless ssh answers)")
    vm_status.add_argument("--json", action="store_true")
    vm_sub.add_parser("info", help="how to reach the VM")
    from rave.staging_image import add_image_parser

    add_image_parser(sub)
    args = parser.parse_args(argv)
    printing_only = "info" in (args.command, getattr(args, "vm_command", None)) or getattr(
        args, "image_command", None
    ) in ("quadlet", "qemu-unit")
    if os.geteuid() != 0 and not printing_only:
        log("must run as root (mounts, network namespaces, systemd-nspawn)")
        return 2
    try:
        inst = Instance(instance_id())
        if args.command == "up":
            cmd_up(inst, args.hosts, args.fresh, args.image)
        elif args.command == "down":
            cmd_down(inst)
        elif args.command == "reset":
            cmd_reset(inst, args.host, args.all)
        elif args.command == "reboot":
            cmd_reboot(inst, args.host)
        elif args.command == "status":
            return cmd_status(inst, args.json)
        elif args.command == "pin-key":
            cmd_pin_key(inst, args.host)
        elif args.command == "info":
            print_info(inst)
        elif args.command == "vm":
            return vm_command(inst, args)
        elif args.command == "image":
            from rave.staging_image import image_command

            return image_command(inst, args)
    except StagingError as error:
        log(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
