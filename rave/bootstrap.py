"""Pieces of ops/bootstrap.py: hand a root+password-only host over to the operator account.

The order is what makes it safe: the operator account, key and sudo rule are installed, then a
NEW connection from the control machine proves that the operator logs in with a key and may
sudo, and only then are password logins switched off (sshd -t before the reload) and root's
password locked. Any failure stops the run for that host with password login still working.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any, cast

import paramiko
from pyinfra.api import FactBase

from rave.settings import HostSettings

SUDOERS_PATH = "/etc/sudoers.d/rave-operator"
# outside /etc/sudoers.d: sudo never reads the candidate, visudo checks it before it is installed
SUDOERS_CANDIDATE = "/etc/sudoers.rave-candidate"
# sshd keeps the first value it reads; 00- sorts before a provider's 50-cloud-init.conf
SSHD_DROPIN = "/etc/ssh/sshd_config.d/00-rave-bootstrap.conf"
SSHD_DROPIN_TEXT = (
    "# written by ops/bootstrap.py: keys only, no root login (the hardening task's\n"
    "# sshd_config replaces this with the full configuration)\n"
    "PasswordAuthentication no\n"
    "KbdInteractiveAuthentication no\n"
    "PermitRootLogin no\n"
)
# sshd -T keywords the drop-in must have made effective
SSHD_EXPECTED = {
    "passwordauthentication": "no",
    "kbdinteractiveauthentication": "no",
    "permitrootlogin": "no",
    "pubkeyauthentication": "yes",
}
KEY_ENV = "RAVE_BOOTSTRAP_KEY"  # private key of the operator on the control machine (optional)
PASSWORD_METHODS = ("password", "keyboard-interactive")


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sudoers_text(user: str) -> str:
    return f"# written by ops/bootstrap.py\n{user} ALL=(ALL:ALL) NOPASSWD: ALL\n"


def login_group(config: HostSettings) -> str:
    """The group sshd's AllowGroups admits (the hardening settings' first one)."""
    return config.sshd_allow_groups[0]


def sshd_check_command(user: str) -> str:
    """A shell test that the running config (sshd -T for this user) has SSHD_EXPECTED."""
    greps = " && ".join(
        f"echo \"$t\" | grep -qx '{key} {value}'" for key, value in SSHD_EXPECTED.items()
    )
    return f't="$(sshd -T -C user={user},host=localhost,addr=127.0.0.1)" && {greps}'


class PasswordStatus(FactBase):
    """The status letter of `passwd -S USER`: P (usable password), L (locked), NP (none)."""

    def command(self, user: str) -> str:
        return f"passwd -S {user}"

    def process(self, output: list[str]) -> str | None:
        parts = output[0].split() if output else []
        return parts[1] if len(parts) > 1 else None


# --- checks from the control machine (python.call callbacks, at execution time) ---------------


def _endpoint(host: Any) -> tuple[str, int]:
    return str(host.data.get("ssh_hostname") or host.name), int(host.data.get("ssh_port") or 22)


def _pinned_host_key(host: Any) -> paramiko.PKey:
    """The host key pyinfra's own (already verified) connection saw: the check must reach the
    same machine, not whatever answers on the address."""
    client = getattr(host.connector, "client", None)
    transport = client.get_transport() if client is not None else None
    if transport is None:
        raise RuntimeError("no SSH connection to take the host key from")
    return transport.get_remote_server_key()


def _key_files(host: Any) -> list[str]:
    files = [os.environ.get(KEY_ENV, ""), str(host.data.get("ssh_key") or "")]
    return [str(Path(f).expanduser()) for f in files if f and Path(f).expanduser().exists()]


def check_operator_login(state: Any, host: Any, user: str, group: str) -> None:
    """A NEW SSH connection as the operator with a key (no password) runs `sudo -n`."""
    address, port = _endpoint(host)
    key = _pinned_host_key(host)
    client = paramiko.SSHClient()
    known = address if port == 22 else f"[{address}]:{port}"
    client.get_host_keys().add(known, key.get_name(), key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            address,
            port=port,
            username=user,
            key_filename=cast(Any, _key_files(host) or None),  # paramiko takes a list too
            look_for_keys=True,
            allow_agent=True,
            password=None,
            timeout=15,
            banner_timeout=15,
            auth_timeout=15,
        )
    except paramiko.SSHException as error:
        raise RuntimeError(
            f"{user} cannot log in to {address} with a key from this machine ({error}); "
            f"password login stays on. Load the operator's key into ssh-agent or set "
            f"{KEY_ENV}=/path/to/private_key and run again."
        ) from None
    try:
        _, stdout, stderr = client.exec_command("sudo -n true && id -nG", timeout=30)
        status = stdout.channel.recv_exit_status()
        groups = stdout.read().decode().split()
        if status != 0:
            raise RuntimeError(
                f"{user} logged in but `sudo -n true` failed: {stderr.read().decode().strip()}"
            )
        if group not in groups:
            raise RuntimeError(f"{user} is not in {group} (groups: {groups})")
    finally:
        client.close()


def allowed_methods(address: str, port: int, key: paramiko.PKey, user: str) -> list[str]:
    """The authentication methods sshd offers USER (an auth 'none' probe, no secret sent)."""
    sock = paramiko.Transport((address, port))
    try:
        sock.start_client(timeout=15)
        seen = sock.get_remote_server_key()
        if seen.get_name() != key.get_name() or seen.asbytes() != key.asbytes():
            raise RuntimeError(f"{address} answered with another host key")
        try:
            sock.auth_none(user)
        except paramiko.BadAuthenticationType as error:
            return list(error.allowed_types)
        return ["none"]
    finally:
        sock.close()


def check_password_refused(state: Any, host: Any, users: list[str], timeout: float = 20) -> None:
    """sshd (reloaded) offers no password method to any of USERS; polled while it re-execs."""
    address, port = _endpoint(host)
    key = _pinned_host_key(host)
    deadline = time.monotonic() + timeout
    while True:
        try:
            offered = {user: allowed_methods(address, port, key, user) for user in users}
        except (OSError, paramiko.SSHException) as error:
            offered = {"?": [f"unreachable: {error}"]}
        bad = {u: m for u, m in offered.items() if set(m) & {*PASSWORD_METHODS, "none"} or u == "?"}
        if not bad:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"sshd on {address} still offers password logins: {bad}")
        time.sleep(0.5)
