"""The way into the host, live: a change to sshd_config or authorized_keys that would lock the
operator out is reverted and the host stays reachable; operators reach the internal UIs through
`ssh -L` and nothing else is forwarded.

Every login and tunnel here is a NEW connection from the control machine with the harness's key
(the deploy's own user and key), against the running sshd.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rave import hardening as h
from rave.deployrun import run_deploy
from rave.staging import OPERATOR
from tests.host.conftest import INSTANCE, host_settings, strict_client
from tests.host.test_hardening import sh, wait_for_ssh, wait_until
from tests.unit.webhook_strategies import property_settings

DEPLOYS = Path(__file__).resolve().parent / "deploys"
# ChannelException codes (RFC 4254 5.1): refused by sshd's policy vs nothing listening
PROHIBITED = paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED


@pytest.fixture
def host_name(host) -> str:
    return host.backend.get_hostname()


@pytest.fixture
def address(staging, host_name) -> str:
    return staging.address(host_name)


def new_login(address: str) -> paramiko.SSHClient:
    """A NEW login as the operator with the deploy's key, host key pinned."""
    return strict_client(address, banner_timeout=15, auth_timeout=15)


def can_log_in(address: str) -> bool:
    try:
        client = new_login(address)
    except paramiko.AuthenticationException:
        return False
    try:
        _, stdout, _ = client.exec_command("id -un", timeout=20)
        return stdout.read().decode().strip() == OPERATOR
    finally:
        client.close()


def access_state(host) -> tuple[str, str]:
    return (
        sh(host, f"sha256sum {h.SSHD_CONFIG}").split()[0],
        sh(host, f"sha256sum /home/{OPERATOR}/.ssh/authorized_keys").split()[0],
    )


def revert_timer_active(host) -> bool:
    return host.run("systemctl is-active rave-sshd-revert.timer").stdout.strip() == "active"


def hardening_ssh(host_name: str, *extra: str):
    return run_deploy(
        "inventories/staging.py",
        [str(DEPLOYS / "hardening_ssh.py")],
        limit=host_name,
        extra_args=list(extra),
    )


# --- staged changes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("deploy", "what"),
    [("ssh_lockout_config.py", "sshd_config"), ("ssh_lockout_keys.py", "authorized_keys")],
)
def test_a_change_that_locks_the_operator_out_is_reverted_at_once(
    host, host_name, address, deploy, what
):
    """Validation would refuse these settings; the deploy files inject them past it. The new
    login fails, the deploy reverts over its old connection and fails, the host stays
    reachable, and the next deploy converges without a change to confirm."""
    before = access_state(host)
    result = run_deploy("inventories/staging.py", [str(DEPLOYS / deploy)], limit=host_name)
    log = result.stdout + result.stderr
    try:
        assert result.returncode != 0, f"a {what} that refuses the deploy's login was confirmed"
        assert "could not log in anew after the SSH access change" in log, result.log_tail()
        assert "reverted at once" in log, result.log_tail()
        assert "Confirm the SSH access change" not in " ".join(result.changed_operations())
        assert access_state(host) == before
        assert not revert_timer_active(host)
        journal = sh(host, "journalctl -q -t rave-sshd-apply --since -5min --no-pager")
        assert "unconfirmed SSH access change reverted" in journal
        wait_for_ssh(address)
        assert can_log_in(address), "the host is not reachable after the revert"
    finally:
        again = hardening_ssh(host_name)
        assert again.ok, again.log_tail()
    # only the candidate (still the injected one) is rewritten: what is installed is current
    assert all("candidate" in op for op in again.changed_operations()), again.changed_operations()
    assert access_state(host) == before


def test_a_deploy_that_dies_after_staging_is_reverted_by_the_host_timer(host, address):
    """The deploy's side never confirms (killed between stage and confirm): the timer on the
    host restores the previous sshd_config and authorized_keys by itself."""
    before = access_state(host)
    config = sh(host, f"cat {h.SSHD_CONFIG}")
    locked = re.sub(r"(?m)^AllowGroups .*$", "AllowGroups rave-nobody", config)
    assert locked != config
    sh(host, f"umask 077; printf %s {shlex.quote(locked)} > /run/rave-ssh-lockout.conf")
    sh(host, f"cp /home/{OPERATOR}/.ssh/authorized_keys /run/rave-ssh-lockout.keys")
    staged = sh(
        host,
        f"{h.SSHD_APPLY} stage 25 {OPERATOR} /run/rave-ssh-lockout.keys /run/rave-ssh-lockout.conf",
    )
    assert "reverting in 25s" in staged
    try:
        assert revert_timer_active(host)
        # our own (established) session still works; a new login is refused
        wait_for_ssh(address)
        assert not can_log_in(address), "the lock-out config admitted the operator"
        wait_until(lambda: access_state(host) == before, 90, interval=2, what="the revert")
        wait_for_ssh(address)
        assert can_log_in(address)
        assert not revert_timer_active(host)
        assert "AllowGroups rave-ssh" in sh(host, f"cat {h.SSHD_CONFIG}")
    finally:
        if access_state(host) != before:
            host.run(f"{h.SSHD_APPLY} abort")
        sh(host, "rm -f /run/rave-ssh-lockout.conf /run/rave-ssh-lockout.keys")


def test_a_good_change_is_confirmed_only_after_a_new_login(host, host_name, address):
    before = access_state(host)
    result = hardening_ssh(host_name, "--data", "sshd_max_sessions=7")
    try:
        assert result.ok, result.log_tail()
        changed = " ".join(result.changed_operations())
        for step in ("stage the SSH access change", "Log in anew", "Confirm the SSH access"):
            assert step in changed, result.changed_operations()
        assert "maxsessions 7" in sh(host, "sshd -T")
        assert not revert_timer_active(host)
        assert sh(host, f"ls -A {'/var/lib/rave-hardening/sshd'} || true").strip() == ""
        assert can_log_in(address)
    finally:
        restore = hardening_ssh(host_name)
        assert restore.ok, restore.log_tail()
    assert access_state(host) == before
    # converged: nothing to stage, so not even a login is tried
    again = hardening_ssh(host_name)
    assert again.ok and again.changed_operations() == [], again.changed_operations()


# --- tunnels to the internal UIs --------------------------------------------------------------


@pytest.fixture
def tunnel_ports(host) -> list[int]:
    ports = h.tunnel_ports(host_settings(host))
    assert 9090 in ports, ports
    return ports


@pytest.fixture
def operator_transport(address) -> Iterator[paramiko.Transport]:
    client = new_login(address)
    transport = client.get_transport()
    assert transport is not None
    yield transport
    client.close()


def free_local_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def openssh(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """The real OpenSSH client over the harness's ssh_config (host key pinned, operator key)."""
    return subprocess.run(
        ["ssh", "-F", str(INSTANCE.ssh_config), "-o", "BatchMode=yes", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_the_documented_tunnel_to_prometheus_works(host_name, tunnel_ports):
    """`ssh -N -L PORT:127.0.0.1:9090` as docs/RUNBOOK.md says, then Prometheus answers."""
    local = free_local_port()
    process = subprocess.Popen(
        [
            "ssh",
            "-F",
            str(INSTANCE.ssh_config),
            "-o",
            "BatchMode=yes",
            "-o",
            "ExitOnForwardFailure=yes",
            "-N",
            "-L",
            f"127.0.0.1:{local}:127.0.0.1:9090",
            host_name,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def answers() -> str | None:
            if process.poll() is not None:
                pytest.fail(f"ssh -L exited: {process.stderr.read() if process.stderr else ''}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{local}/-/ready", timeout=5) as r:
                    return r.read().decode()
            except OSError:
                return None

        body = wait_until(answers, 30, interval=1, what="Prometheus through the tunnel")
        print(body)
        assert "Prometheus" in body and "Ready" in body
        with urllib.request.urlopen(
            f"http://127.0.0.1:{local}/api/v1/query?query=up", timeout=10
        ) as response:
            assert b'"status":"success"' in response.read()
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_each_ui_port_opens_and_every_other_listening_port_is_prohibited(
    host, operator_transport, tunnel_ports
):
    """Every TCP port listening on the host (ss), loopback or not: only the UI ports open."""
    listening = {
        int(match)
        for match in re.findall(r":(\d+)\s", sh(host, "ss -Hltn | awk '{print $4\" \"}'"))
    }
    assert set(tunnel_ports) <= listening, (tunnel_ports, listening)
    others = sorted(listening - set(tunnel_ports))
    assert {22, 5432, 8001, 3002} <= set(others), others
    for port in tunnel_ports:
        channel = operator_transport.open_channel(
            "direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 0), timeout=15
        )
        channel.close()
    for port in others:
        with pytest.raises(paramiko.ChannelException) as refused:
            operator_transport.open_channel(
                "direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 0), timeout=15
            )
        assert refused.value.code == PROHIBITED, (port, refused.value)


@property_settings("RAVE_SSH_TUNNEL_EXAMPLES", 60)
@given(
    target=st.one_of(
        st.tuples(st.just("127.0.0.1"), st.integers(min_value=1, max_value=65535)),
        st.tuples(
            st.sampled_from(
                ["localhost", "127.0.0.2", "::1", "0.0.0.0", "[127.0.0.1]", "10.213.0.1", ""]
            ),
            st.sampled_from([9090, 9093, 3030, 22]),
        ),
    )
)
def test_no_other_destination_is_forwarded(operator_transport, tunnel_ports, target):
    """Hostile destinations against the live daemon: any port but the UIs', and the UI ports
    under any other name for loopback, are refused by policy (not merely unanswered)."""
    destination, port = target
    if destination == "127.0.0.1" and port in tunnel_ports:
        return
    with pytest.raises(paramiko.ChannelException) as refused:
        operator_transport.open_channel(
            "direct-tcpip", (destination, port), ("127.0.0.1", 0), timeout=15
        )
    assert refused.value.code == PROHIBITED, (target, refused.value)


def test_remote_forwarding_is_refused(host_name, operator_transport):
    with pytest.raises(paramiko.SSHException):
        operator_transport.request_port_forward("127.0.0.1", 0)
    result = openssh("-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:22", host_name, "true")
    assert result.returncode != 0
    assert "remote port forwarding failed" in result.stderr, result.stderr


def test_agent_forwarding_is_refused(host_name, tmp_path):
    """A real agent with a key in it, `ssh -A`: no agent socket appears on the host."""
    socket_path = Path(tempfile.mkdtemp(prefix="rave-agent-")) / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)])
    try:
        wait_until(socket_path.exists, 10, interval=0.2, what="ssh-agent's socket")
        environment = {**os.environ, "SSH_AUTH_SOCK": str(socket_path)}
        subprocess.run(["ssh-add", str(INSTANCE.key)], env=environment, check=True)
        result = subprocess.run(
            [
                "ssh",
                "-F",
                str(INSTANCE.ssh_config),
                "-o",
                "BatchMode=yes",
                "-A",
                host_name,
                "echo agent=${SSH_AUTH_SOCK:-none}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env=environment,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "agent=none", result.stdout
    finally:
        agent.terminate()
        agent.wait(timeout=10)


def test_stream_local_forwarding_is_refused(host, host_name):
    """`ssh -L LOCALSOCKET:/run/postgresql/.s.PGSQL.5432`: a connection through it is closed at
    once and ssh reports that the daemon opened nothing. (sshd answers a refused stream-local
    forward "connect failed", not "prohibited": the operator itself can connect to that socket
    on the host, so the refusal is sshd's.)"""
    sh(
        host,
        f'runuser -u {OPERATOR} -- python3 -c "import socket; '
        "socket.socket(socket.AF_UNIX).connect('/run/postgresql/.s.PGSQL.5432')\"",
    )
    local = Path(tempfile.mkdtemp(prefix="rave-sl-")) / "pg.sock"
    process = subprocess.Popen(
        [
            "ssh",
            "-F",
            str(INSTANCE.ssh_config),
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=INFO",  # the harness's ssh_config says ERROR: the refusal is INFO
            "-N",
            "-L",
            f"{local}:/run/postgresql/.s.PGSQL.5432",
            host_name,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(local.exists, 30, interval=0.5, what="ssh's local socket")
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(15)
            conn.connect(str(local))
            assert conn.recv(64) == b"", "a stream-local channel was opened"
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert "open failed" in stderr, stderr


def test_only_the_operator_group_may_forward(host):
    """sshd's own evaluation of the Match block for an operator and for anyone else."""
    settings = host_settings(host)
    operator = sh(host, f"sshd -T -C user={OPERATOR},host=x,addr=192.0.2.1")
    other = sh(host, "sshd -T -C user=rave,host=x,addr=192.0.2.1")
    ports = " ".join(f"127.0.0.1:{port}" for port in h.tunnel_ports(settings))
    assert f"permitopen {ports}\n" in operator
    assert "allowtcpforwarding local\n" in operator
    assert "disableforwarding no\n" in operator
    for line in ("allowtcpforwarding no", "disableforwarding yes", "permitopen none"):
        assert f"{line}\n" in other, line
    for session in (operator, other):
        for line in (
            "allowagentforwarding no",
            "allowstreamlocalforwarding no",
            "x11forwarding no",
            "permittunnel no",
            "permitlisten none",
            "gatewayports no",
        ):
            assert f"{line}\n" in session, line
