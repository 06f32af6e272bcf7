"""The hardening controls a container cannot have, on the staging VM (`make test-vm`).

Boots the instance's VM fresh (`rave-staging vm up --fresh`), deploys base + hardening
(tests/host/deploys/hardening_vm.py through inventories/staging_vm.py) and asks the running
kernel: auditd with the project's rules loaded, AppArmor enabled, every kernel.* sysctl applied.
``RAVE_STAGING_REUSE=1`` uses a running, deployed VM as it is. Times are printed (pytest -s).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import testinfra

from rave import hardening as h
from rave.deployrun import DeployResult, run_deploy
from rave.staging import OPERATOR, Instance, instance_id
from rave.staging_vm import vm_host
from tests.host.conftest import rave_staging as host_rave_staging
from tests.host.conftest import strict_client

REPO = Path(__file__).resolve().parents[2]
INVENTORY = "inventories/staging_vm.py"
DEPLOY = "tests/host/deploys/hardening_vm.py"
INSTANCE = Instance(instance_id())
VM = vm_host(INSTANCE)
REUSE = os.environ.get("RAVE_STAGING_REUSE") == "1"
TIMES: dict[str, float] = {}


def rave_staging(*args: str) -> subprocess.CompletedProcess[str]:
    return host_rave_staging(*args, timeout=1800)  # a TCG boot or image build is slow


def deploy() -> DeployResult:
    result = run_deploy(INVENTORY, (DEPLOY,))
    if not result.ok:
        pytest.fail(
            f"the deploy to the VM failed: {result.summary()}\n{result.log_tail(80)}",
            pytrace=False,
        )
    return result


@pytest.fixture(scope="module")
def vm() -> Iterator[testinfra.host.Host]:
    if os.geteuid() != 0:
        pytest.fail("the VM test needs root (tap on the bridge, qemu)", pytrace=False)
    if REUSE:
        rave_staging("vm", "status")
    else:
        started = time.monotonic()
        rave_staging("vm", "up", "--fresh")
        TIMES["vm up --fresh (disk + boot)"] = time.monotonic() - started
        started = time.monotonic()
        deploy()
        TIMES["first deploy (base + hardening)"] = time.monotonic() - started
    infra = testinfra.get_host(
        f"paramiko://{OPERATOR}@{VM.name}", ssh_config=str(INSTANCE.ssh_config), sudo=True
    )
    infra.backend.__dict__["client"] = strict_client(VM.address)
    yield infra
    client = infra.backend.__dict__.pop("client", None)
    if client is not None:
        client.close()
    for what, seconds in TIMES.items():
        print(f"\nVM timing: {what}: {seconds:.1f}s")


def sh(host: testinfra.host.Host, command: str) -> str:
    result = host.run(command)
    assert result.rc == 0, f"{command!r} exited {result.rc}: {result.stdout}{result.stderr}"
    return result.stdout


def test_the_vm_runs_under_qemu_with_its_own_kernel(vm):
    status = json.loads(rave_staging("vm", "status", "--json").stdout)["vm"]
    assert status["running"] and status["ssh"]
    assert status["accel"] in ("kvm", "tcg")
    print(f"\nVM acceleration: {status['accel']}")
    assert sh(vm, "systemd-detect-virt --container || true").strip() == "none"
    assert sh(vm, "systemd-detect-virt --vm").strip() in ("qemu", "kvm")
    # on the instance's bridge only: its default route is the bridge address (the proxy host)
    assert f"via {INSTANCE.gateway} " in sh(vm, "ip -4 route show default")


def test_nothing_is_reported_as_impossible(vm):
    report = json.loads(sh(vm, f"cat {h.REPORT_PATH}"))
    assert report["virtualization"] == "none"
    assert report.get("exceptions", {}) == {}
    assert sh(vm, "systemctl list-units --failed --no-legend --plain").strip() == ""


def _rules(text: str) -> list[tuple[str, ...]]:
    """Rules in one form whether written in rules.d or printed by `auditctl -l` (which drops a
    watched directory's trailing /, prints `-k K` as `-F key=K` and reorders syscalls)."""
    rules = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0] not in ("-w", "-a"):
            continue
        normal: list[str] = [words[0]]
        rest = iter(words[1:])
        for word in rest:
            if word in ("-k", "-F", "-S", "-p"):
                value = next(rest)
                if word == "-k":
                    normal.append(f"-F key={value}")
                elif word == "-S":
                    normal.append(f"-S {','.join(sorted(value.split(',')))}")
                else:
                    normal.append(f"{word} {value}")
            else:  # the watched path or the action,list
                normal.append(word.rstrip("/") if words[0] == "-w" else word)
        rules.append(tuple(sorted(normal)))
    return rules


def test_auditd_runs_with_every_project_rule_loaded(vm):
    assert vm.service("auditd").is_running
    assert vm.service("auditd").is_enabled
    wanted = _rules(sh(vm, f"cat {h.AUDIT_RULES}"))
    assert len(wanted) >= 15
    assert not _missing_rules(vm), f"rules of {h.AUDIT_RULES} the kernel does not have"
    assert "enabled 1" in sh(vm, "auditctl -s")


def _missing_rules(vm: testinfra.host.Host) -> list[tuple[str, ...]]:
    loaded = _rules(sh(vm, "auditctl -l"))
    missing = [rule for rule in _rules(sh(vm, f"cat {h.AUDIT_RULES}")) if rule not in loaded]
    print(f"\naudit rules missing from auditctl -l: {missing}")
    return missing


def test_a_watched_file_change_is_audited(vm):
    marker = f"rave-vm-test-{time.time_ns()}"
    sh(vm, f"touch /etc/sudoers.d/{marker} && rm -f /etc/sudoers.d/{marker}")
    deadline = time.monotonic() + 30
    while True:
        found = vm.run(f"ausearch -k sudoers -f {marker} --input-logs")
        if found.rc == 0 and marker in found.stdout:
            break
        assert time.monotonic() < deadline, f"no audit event for {marker}: {found.stderr}"
        time.sleep(1)


def test_apparmor_is_enabled_and_enforcing_profiles(vm):
    assert sh(vm, "cat /sys/module/apparmor/parameters/enabled").strip() == "Y"
    assert vm.run("aa-status --enabled").rc == 0
    assert vm.service("apparmor").is_enabled
    assert vm.service("apparmor").is_running  # a oneshot that remains after exit


def test_every_kernel_sysctl_is_applied(vm):
    desired = {}
    for line in sh(vm, "cat /etc/sysctl.d/90-rave-hardening.conf").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            desired[key.strip()] = value.strip()
    kernel_keys = [key for key in desired if key.startswith(("kernel.", "fs."))]
    assert len(kernel_keys) >= 5, f"too few kernel.*/fs.* keys in the set: {kernel_keys}"
    fact = h.SysctlState()
    state = fact.process(sh(vm, fact.command(tuple(sorted(desired)))).splitlines())
    wrong = {k: state[k].value for k in desired if state[k].value != " ".join(desired[k].split())}
    assert not wrong, f"not applied on the VM (want {desired}): {wrong}"


def test_a_second_deploy_changes_nothing(vm):
    started = time.monotonic()
    result = deploy()
    TIMES["second deploy (no change)"] = time.monotonic() - started
    assert result.changed == 0, result.changed_operations()


def _qemu_pids() -> list[int]:
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and VM.qemu_name in _cmdline(int(entry.name))
    ]


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True).returncode == 0


def test_up_recovers_from_a_killed_qemu_and_keeps_the_disk(vm):
    boot_before = sh(vm, "cat /proc/sys/kernel/random/boot_id").strip()
    sh(vm, "touch /var/lib/rave-staging/vm-kill-test && sync")
    (pid,) = _qemu_pids()
    os.kill(pid, 9)  # a killed session: the tap and the state files stay behind
    deadline = time.monotonic() + 10
    while pid in _qemu_pids() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _link_exists(VM.tap)
    started = time.monotonic()
    rave_staging("vm", "up")
    TIMES["vm up after a killed qemu (boot only)"] = time.monotonic() - started
    assert len(_qemu_pids()) == 1
    vm.backend.__dict__.pop("client").close()
    vm.backend.__dict__["client"] = strict_client(VM.address)
    assert sh(vm, "cat /proc/sys/kernel/random/boot_id").strip() != boot_before
    assert vm.file("/var/lib/rave-staging/vm-kill-test").exists
    # the deployed controls come back at boot: every rule (the secrets directory they watch is
    # made by tmpfiles before auditd loads them)
    assert vm.service("auditd").is_running
    assert not _missing_rules(vm)


def test_zz_down_removes_what_up_made(vm):
    containers_running = any(INSTANCE.host(i).pid() for i in INSTANCE.known_indices())
    vm.backend.__dict__.pop("client").close()
    vm.backend.__dict__["client"] = None  # the fixture's teardown must not close it twice
    rave_staging("vm", "down")
    assert _qemu_pids() == []
    assert not _link_exists(VM.tap)
    assert not VM.json_file.exists()
    assert "rave-staging-vm" not in INSTANCE.ssh_config.read_text()
    assert VM.disk.exists()  # kept, like a container's upper layer
    # the bridge and proxy go only when no container of the instance needs them
    assert _link_exists(INSTANCE.bridge) == containers_running
