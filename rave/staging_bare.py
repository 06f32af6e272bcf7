"""A staging host as a rented server is handed over: reachable only as root with a password.

Used by the bootstrap test (ops/bootstrap.py). The host lives beside the instance's normal
hosts (next free number, same bridge and proxy) but is NOT one of them: it is not written to
hosts.json, ssh_config or known_hosts and gets no staging secrets, so the session's deployed
hosts (and their secrets) are untouched. ``remove_bare_host`` deletes it again.

    boot_bare_host(instance, index, root_password)   # root password from the caller, not argv
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time

from rave.staging import (
    OPERATOR,
    OPERATOR_GROUP,
    Host,
    Instance,
    StagingError,
    check_instance_id,
    ensure_bridge,
    ensure_cached_root,
    ensure_host_key,
    ensure_operator_key,
    ensure_proxy,
    mount_overlay,
    provision,
    run,
    setup_host_network,
    start_container,
    teardown_host,
)

# sorts after ops/bootstrap.py's 00-rave-bootstrap.conf, like a provider's 50-cloud-init.conf
PASSWORD_DROPIN = "etc/ssh/sshd_config.d/50-provider-password.conf"


def _unprovision_operator(host: Host, root_password: str) -> None:
    """Undo the harness's operator account; give root a password and allow password logins."""
    root = str(host.root)
    script = (
        "set -e\n"
        f"userdel --remove {OPERATOR} 2>/dev/null || true\n"
        f"groupdel {OPERATOR_GROUP} 2>/dev/null || true\n"
        f"rm -f /etc/sudoers.d/{OPERATOR}\n"
    )
    run("chroot", root, "/bin/sh", "-c", script)
    # the password goes through stdin only (never argv)
    result = subprocess.run(
        ["chroot", root, "chpasswd"],
        input=f"root:{root_password}\n",
        text=True,
        capture_output=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise StagingError(f"chpasswd failed: {result.stderr.strip()}")
    dropin = host.root / PASSWORD_DROPIN
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text(
        "# rave-staging: a freshly rented server, reachable as root with a password\n"
        "PermitRootLogin yes\n"
        "PasswordAuthentication yes\n"
    )


def _ssh_banner(address: str, timeout: float = 2) -> bool:
    try:
        with socket.create_connection((address, 22), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def boot_bare_host(inst: Instance, index: int, root_password: str, timeout: float = 180) -> Host:
    """Boot host ``index`` fresh as a root+password-only machine; return once sshd answers."""
    with inst.locked():
        check_instance_id(inst)
        host = _boot(inst, index, root_password)
    deadline = time.monotonic() + timeout
    while not _ssh_banner(host.address):
        if not host.pid():
            raise StagingError(f"{host.name}: systemd-nspawn exited; see {host.console}")
        if time.monotonic() > deadline:
            raise StagingError(f"{host.name}: sshd did not answer within {timeout:.0f}s")
        time.sleep(0.5)
    return host


def _boot(inst: Instance, index: int, root_password: str) -> Host:
    host = inst.host(index)
    if inst.hosts_json.exists():
        listed = {entry["name"] for entry in json.loads(inst.hosts_json.read_text())}
        if host.name in listed:
            raise StagingError(f"{host.name} is one of the instance's hosts: pick a free number")
    lower = ensure_cached_root()
    ensure_operator_key(inst)
    ensure_bridge(inst)
    ensure_proxy(inst)
    teardown_host(host)  # whatever an earlier run left
    shutil.rmtree(host.dir, ignore_errors=True)
    ensure_host_key(host)
    mount_overlay(host, lower)
    provision(host)
    _unprovision_operator(host, root_password)
    setup_host_network(host)
    start_container(host)
    return host


def remove_bare_host(inst: Instance, index: int) -> None:
    """Stop the host and delete everything it left (container, mounts, netns, state dir)."""
    host = inst.host(index)
    with inst.locked():
        teardown_host(host)
        shutil.rmtree(host.dir, ignore_errors=True)
