"""Sandbox escapes tried from inside each running daemon's own view of the host.

`systemd-analyze security` scores the unit file; this asks the running process. For every
long-running confined daemon the host runs, the test enters the daemon's mount namespace as
root (what an attacker who took the daemon over, root included, would see) and tries to leave a
trace where its sandbox forbids: the system directories, root's home, the operators' homes, the
host's /tmp. Each must be refused, while the daemon's own ReadWritePaths stay writable (proof
that the probe really runs in the daemon's namespace: on the host itself every write succeeds).
The process itself must hold no_new_privs and a seccomp filter.
"""

from __future__ import annotations

import shlex
import uuid

import pytest

from rave.components import COMPONENTS
from rave.observability import enabled_components
from tests.host.conftest import host_settings

# sshd is left unconfined on purpose (a sandbox would confine the operators' shells);
# scheduled components are oneshots with no process to enter between runs
CONFINED = sorted(
    {f"{c.unit}.service" for c in COMPONENTS if c.name != "sshd" and not c.scheduled}
    | {"fail2ban.service"}
)
# places no confined daemon may write, even as root (ProtectSystem=strict, ProtectHome)
FORBIDDEN_DIRS = ("/etc", "/usr/local/sbin", "/var/lib", "/root", "/home/agent", "/boot")


def in_namespace(host, pid: int, script: str):
    """Run `script` as root inside the mount namespace of `pid`."""
    return host.run(f"nsenter --target {pid} --mount -- sh -c {shlex.quote(script)}")


def main_pid(host, unit: str) -> int:
    return int(host.check_output(f"systemctl show -p MainPID --value {unit}"))


def running_units(host) -> list[str]:
    enabled = {f"{c.unit}.service" for c in enabled_components(host_settings(host))}
    return [u for u in CONFINED if u in enabled or u == "fail2ban.service"]


@pytest.mark.parametrize("unit", CONFINED)
def test_a_daemon_taken_over_cannot_write_outside_its_sandbox(host, unit):
    if unit not in running_units(host):
        assert host.run(f"systemctl is-active {unit}").stdout.strip() != "active"
        return
    pid = main_pid(host, unit)
    assert pid > 0, f"{unit} is not running"
    status = host.file(f"/proc/{pid}/status").content_string
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["NoNewPrivs"].strip() == "1", f"{unit}: no_new_privs is off"
    assert fields["Seccomp"].strip() == "2", f"{unit}: no seccomp filter"

    probe = f".rave-escape-{uuid.uuid4().hex[:12]}"
    for directory in FORBIDDEN_DIRS:
        target = f"{directory}/{probe}"
        attempt = in_namespace(host, pid, f"echo x > {target}")
        on_host = host.file(target).exists
        if on_host:
            host.run(f"rm -f {target}")
        assert attempt.rc != 0 and not on_host, f"{unit} could write {target}"

    # its /tmp is its own: a file left there never appears in the host's /tmp
    planted = in_namespace(host, pid, f"echo x > /tmp/{probe} && cat /tmp/{probe}")
    assert planted.rc == 0, planted.stderr
    assert not host.file(f"/tmp/{probe}").exists, f"{unit} shares the host's /tmp"
    in_namespace(host, pid, f"rm -f /tmp/{probe}")

    # and its declared state is writable there: the probe really is inside the sandbox
    writable = host.check_output(f"systemctl show -p ReadWritePaths --value {unit}").split()
    for path in writable[:1]:
        path = path.lstrip("-")
        if not host.file(path).is_directory:
            continue
        wrote = in_namespace(host, pid, f"echo x > {path}/{probe} && rm {path}/{probe}")
        assert wrote.rc == 0, f"{unit}: its own {path} is not writable: {wrote.stderr}"
