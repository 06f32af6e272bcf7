"""ops/bootstrap.py on a host reachable only as root with a password (rave/staging_bare.py).

A spare staging host (the next free number; not one of the session's deployed hosts, no staging
secrets) is booted as a freshly rented server: no operator account, root with a password,
PasswordAuthentication yes. The bootstrap first refuses to close the password way in while the
operator cannot log in, then hands the host over; afterwards the operator's key and sudo work,
password logins are refused and root's password is locked. The host is removed at the end.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest

from rave.deployrun import DeployResult, parse_results, pyinfra_bin, run_deploy
from rave.staging import MAX_HOSTS, OPERATOR, Host
from rave.staging_bare import boot_bare_host, remove_bare_host
from tests.host.conftest import ALL_NAMES, INSTANCE, REPO

DENY_DROPIN = "etc/ssh/sshd_config.d/10-test-deny-operator.conf"


@dataclass
class BareHost:
    host: Host
    password: str
    inventory: Path  # a one-host inventory named staging.py: group_data/staging.py applies

    @property
    def address(self) -> str:
        return self.host.address

    def host_key(self) -> paramiko.PKey:
        return paramiko.Ed25519Key.from_private_key_file(str(self.host.host_key))

    def client(self, user: str, **auth: object) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        key = self.host_key()
        client.get_host_keys().add(self.address, key.get_name(), key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            self.address,
            username=user,
            look_for_keys=False,
            allow_agent=False,
            timeout=10,
            banner_timeout=10,
            auth_timeout=10,
            **auth,  # type: ignore[arg-type]
        )
        return client

    def as_root(self) -> paramiko.SSHClient:
        return self.client("root", password=self.password)

    def as_operator(self) -> paramiko.SSHClient:
        return self.client(OPERATOR, key_filename=str(INSTANCE.key))


def run(client: paramiko.SSHClient, command: str) -> tuple[int, str]:
    _, stdout, stderr = client.exec_command(command, timeout=30)
    status = stdout.channel.recv_exit_status()
    return status, stdout.read().decode() + stderr.read().decode()


def bootstrap_as_root(bare: BareHost) -> DeployResult:
    """The documented first run: --user root --ssh-password-prompt, the password on stdin.

    start_new_session: no controlling terminal, so getpass reads the password from stdin."""
    command = [
        pyinfra_bin(),
        "-y",
        "--json",
        "--user",
        "root",
        "--ssh-password-prompt",
        str(bare.inventory),
        "ops/bootstrap.py",
    ]
    started = time.monotonic()
    process = subprocess.run(
        command,
        cwd=REPO,
        input=bare.password + "\n",
        env={**os.environ, "PYINFRA_PROGRESS": "off"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        start_new_session=True,
    )
    results = parse_results(process.stdout)
    return DeployResult(
        command=tuple(command),
        returncode=process.returncode,
        seconds=time.monotonic() - started,
        stdout=process.stdout,
        stderr=process.stderr,
        failed_hosts=tuple(results.get("failed_hosts", [])) if results else (),
        parsed=results is not None,
    )


def wait_for_root_password_login(bare: BareHost, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            bare.as_root().close()
            return
        except (OSError, paramiko.SSHException) as error:
            if time.monotonic() > deadline:
                pytest.fail(f"root password login to {bare.address} never worked: {error}")
            time.sleep(1)


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BareHost]:
    if os.geteuid() != 0:
        pytest.fail("host tests need root (network namespaces, mounts, nspawn)", pytrace=False)
    index = len(ALL_NAMES) + 1
    if index > MAX_HOSTS:
        pytest.skip(f"no free staging host number for the bootstrap test (max {MAX_HOSTS})")
    password = secrets.token_urlsafe(18)
    host = boot_bare_host(INSTANCE, index, password)
    try:
        workdir = tmp_path_factory.mktemp("bootstrap")
        known_hosts = workdir / "known_hosts"
        known_hosts.write_text(f"{host.address} {host.host_public_key()}\n")
        inventory = workdir / "staging.py"
        inventory.write_text(
            "rave = [\n"
            f"    ({host.name!r}, {{\n"
            f"        'ssh_hostname': {host.address!r},\n"
            f"        'ssh_user': {OPERATOR!r},\n"
            f"        'ssh_key': {str(INSTANCE.key)!r},\n"
            f"        'ssh_known_hosts_file': {str(known_hosts)!r},\n"
            "        'ssh_strict_host_key_checking': 'yes',\n"
            "        '_sudo': True,\n"
            "    }),\n"
            "]\n"
        )
        handle = BareHost(host, password, inventory)
        wait_for_root_password_login(handle)
        yield handle
    finally:
        remove_bare_host(INSTANCE, index)


def test_before_the_bootstrap_only_root_with_a_password_gets_in(bare):
    with pytest.raises(paramiko.AuthenticationException):
        bare.as_operator()
    client = bare.as_root()
    try:
        assert run(client, "passwd -S root")[1].split()[1] == "P"
        assert run(client, f"id {OPERATOR}")[0] != 0
    finally:
        client.close()


def test_no_lockout_while_the_operator_cannot_log_in(bare):
    """With the operator's key refused by sshd, the run fails and passwords stay on."""
    client = bare.as_root()
    try:
        status, out = run(
            client,
            f"echo 'DenyUsers {OPERATOR}' > /{DENY_DROPIN} && sshd -t && "
            "systemctl reload ssh.service",
        )
        assert status == 0, out
    finally:
        client.close()
    result = bootstrap_as_root(bare)
    # pyinfra stops with "No hosts remaining!" (no JSON) when its only host failed
    assert result.returncode != 0, result.log_tail()
    assert f"{OPERATOR} cannot log in" in result.stderr + result.stdout
    client = bare.as_root()  # the password still works
    try:
        assert run(client, "passwd -S root")[1].split()[1] == "P"
        assert run(client, "test -e /etc/ssh/sshd_config.d/00-rave-bootstrap.conf")[0] != 0
        # the account, key and sudo rule are in place already; only sshd refuses the operator
        assert run(client, f"visudo -c && sudo -l -U {OPERATOR} | grep -q NOPASSWD")[0] == 0
        status, out = run(client, f"rm /{DENY_DROPIN} && systemctl reload ssh.service")
        assert status == 0, out
    finally:
        client.close()


def test_bootstrap_hands_the_host_to_the_operator(bare):
    result = bootstrap_as_root(bare)
    assert result.returncode == 0 and result.parsed and not result.failed_hosts, (
        f"{result.summary()}\n{result.log_tail(60)}"
    )
    assert bare.password not in result.stdout + result.stderr


def test_operator_logs_in_with_the_key_and_may_sudo(bare):
    client = bare.as_operator()
    try:
        status, out = run(client, "sudo -n true && id -nG && stat -c '%a %U' .ssh/authorized_keys")
        assert status == 0, out
        assert "rave-ssh" in out.split()
        assert "600 agent" in out
        assert run(client, "sudo -n stat -c '%a %U' /etc/sudoers.d/rave-operator")[1] == (
            "440 root\n"
        )
    finally:
        client.close()


def test_password_logins_are_refused(bare):
    with pytest.raises(paramiko.AuthenticationException):
        bare.as_root()
    transport = paramiko.Transport((bare.address, 22))
    try:
        transport.start_client(timeout=10)
        with pytest.raises(paramiko.BadAuthenticationType) as refused:
            transport.auth_none(OPERATOR)
        assert refused.value.allowed_types == ["publickey"]
    finally:
        transport.close()


def test_root_password_is_locked(bare):
    client = bare.as_operator()
    try:
        status, out = run(client, "sudo -n passwd -S root")
        assert status == 0 and out.split()[1] == "L", out
        status, out = run(client, "sudo -n sshd -T -C user=root,host=x,addr=127.0.0.1")
        assert "permitrootlogin no" in out.splitlines()
        assert "passwordauthentication no" in out.splitlines()
    finally:
        client.close()


def test_a_second_run_as_the_operator_changes_nothing(bare):
    result = run_deploy(bare.inventory, ["ops/bootstrap.py"])
    assert result.ok, f"{result.summary()}\n{result.log_tail(60)}"
    assert not result.changed_operations(), result.changed_operations()
