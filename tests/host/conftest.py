"""Host tests run against live staging hosts (rave/staging.py).

Once per session this boots fresh staging hosts for the instance ``RAVE_STAGING_ID`` (default
0; ``RAVE_STAGING_HOSTS`` hosts, default 1) and deploys ``deploy.py`` to them. With
``RAVE_STAGING_REUSE=1`` it uses the running, already deployed hosts as they are (quick
iterations: ``RAVE_STAGING_REUSE=1 .venv/bin/pytest tests/host/test_x.py``).

Fixtures:
- ``staging``: the session's hosts (names, addresses, ``ssh()``, ``reboot()``, ``deploy()``).
- ``host``: a testinfra host (sudo) over the harness's ssh key, with the host key checked
  against ``.staging/known_hosts``; tests using it run once per staging host.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest
import testinfra

from rave.deployrun import DeployResult, run_deploy
from rave.settings import HostSettings
from rave.speedups import disable_nagle
from rave.staging import OPERATOR, Instance, instance_id
from rave.validation import DataLayer, validate_host

disable_nagle()  # testinfra's paramiko backend too: ~40 ms less per command

INSTANCE = Instance(instance_id())
REUSE = os.environ.get("RAVE_STAGING_REUSE") == "1"
HOST_COUNT = int(os.environ.get("RAVE_STAGING_HOSTS", "1"))
# the last host is a monitoring host (inventories/staging.py; `make test-multihost`)
MONITORING = os.environ.get("RAVE_STAGING_MONITORING") == "1"
REPO = Path(__file__).resolve().parents[2]


def _host_names() -> list[str]:
    if REUSE and INSTANCE.hosts_json.exists():
        return [entry["name"] for entry in json.loads(INSTANCE.hosts_json.read_text())]
    return [f"rave-staging-{k}" for k in range(1, HOST_COUNT + 1)]


ALL_NAMES = _host_names()
MONITORING_NAMES = ALL_NAMES[-1:] if MONITORING else []
# the service hosts: every suite's `host` fixture runs on each of them
HOST_NAMES = [name for name in ALL_NAMES if name not in MONITORING_NAMES]


def _group_layer(name: str) -> DataLayer:
    path = REPO / "group_data" / f"{name}.py"
    values = runpy.run_path(str(path))
    return DataLayer(f"group_data/{name}.py", {k: values[k] for k in values.get("__all__", [])})


def host_settings(host) -> HostSettings:
    """A service host's settings as the staging deploy validates them (group_data layers)."""
    name = host.check_output("hostname")
    return validate_host(name, [_group_layer("staging"), _group_layer("all")])


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "multihost: needs service hosts plus a monitoring host (make test-multihost)"
    )


def rave_staging(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run the harness CLI for this session's instance; fail the test with its output."""
    process = subprocess.run(
        [sys.executable, "-m", "rave.staging", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )
    if process.returncode != 0:
        pytest.fail(
            f"rave-staging {' '.join(args)} failed ({process.returncode}):\n"
            f"{process.stdout}\n{process.stderr}",
            pytrace=False,
        )
    return process


def strict_client(address: str, **connect_options: float) -> paramiko.SSHClient:
    """A new login as the operator with the harness's key, the host key pinned."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(INSTANCE.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        address,
        username=OPERATOR,
        key_filename=str(INSTANCE.key),
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
        **connect_options,
    )
    return client


@dataclass
class StagingHosts:
    instance: Instance
    names: list[str]

    def entry(self, name: str) -> dict[str, str]:
        for item in json.loads(self.instance.hosts_json.read_text()):
            if item["name"] == name:
                return item
        raise KeyError(name)

    def address(self, name: str) -> str:
        return self.entry(name)["address"]

    def address6(self, name: str) -> str:
        """The host's IPv6 address (fd52:a7e0:<n>::<10+k>, on the instance's bridge only)."""
        return self.entry(name)["address6"]

    def index(self, name: str) -> int:
        return int(name.rsplit("-", 1)[1])

    def ssh(self, name: str, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a command as the operator over the harness's ssh_config (no sudo)."""
        return subprocess.run(
            ["ssh", "-F", str(self.instance.ssh_config), name, command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def testinfra_host(self, name: str) -> testinfra.host.Host:
        spec = f"paramiko://{OPERATOR}@{name}"
        infra = testinfra.get_host(spec, ssh_config=str(self.instance.ssh_config), sudo=True)
        backend = infra.backend
        if "client" not in backend.__dict__:
            backend.__dict__["client"] = strict_client(self.address(name))
        return infra

    def reconnect(self, name: str) -> None:
        backend = self.testinfra_host(name).backend
        old = backend.__dict__.pop("client", None)
        if old is not None:
            old.close()
        backend.__dict__["client"] = strict_client(self.address(name))

    def reboot(self, name: str) -> None:
        """Restart the host keeping its state; returns once sshd answers again."""
        rave_staging("reboot", "--host", str(self.index(name)))
        self.reconnect(name)

    def deploy(self, *deploys: str, limit: str | None = None) -> DeployResult:
        return run_deploy("inventories/staging.py", deploys or ("deploy.py",), limit=limit)


@pytest.fixture(scope="session")
def staging() -> Iterator[StagingHosts]:
    if os.geteuid() != 0:
        pytest.fail("host tests need root (network namespaces, mounts, nspawn)", pytrace=False)
    hosts = StagingHosts(INSTANCE, ALL_NAMES)
    if REUSE:
        status = subprocess.run(
            [sys.executable, "-m", "rave.staging", "status"],
            capture_output=True,
            text=True,
            check=False,
        )
        if status.returncode != 0:
            pytest.fail(
                "RAVE_STAGING_REUSE=1 but the staging hosts are not all up: run `make staging`"
                f"\n{status.stdout}{status.stderr}",
                pytrace=False,
            )
    else:
        rave_staging("up", "--fresh", "--hosts", str(HOST_COUNT))
        result = hosts.deploy()
        if not result.ok:
            pytest.fail(
                f"the deploy to fresh staging hosts failed: {result.summary()}\n"
                f"{result.log_tail(80)}",
                pytrace=False,
            )
    yield hosts
    for name in hosts.names:
        infra = testinfra.get_host(
            f"paramiko://{OPERATOR}@{name}", ssh_config=str(INSTANCE.ssh_config), sudo=True
        )
        client = infra.backend.__dict__.pop("client", None)
        if client is not None:
            client.close()


@pytest.fixture(scope="session", params=HOST_NAMES)
def host(request: pytest.FixtureRequest, staging: StagingHosts) -> testinfra.host.Host:
    return staging.testinfra_host(request.param)
