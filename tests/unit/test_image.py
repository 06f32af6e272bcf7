"""rave.image without a staging host: identity removal, the tarball, the Podman and QEMU units."""

from __future__ import annotations

import math
import os
import re
import stat
from pathlib import Path

import pytest

from rave import image as img
from rave.components import public_ports
from rave.modes import PROFILES, Mode

# every key podman's Quadlet reads in [Container] (podman-systemd.unit(5), podman 4.4-4.9): a
# typo would be ignored with a warning and the hardening silently lost
QUADLET_CONTAINER_KEYS = {
    "AddCapability", "AddDevice", "Annotation", "AutoUpdate", "ContainerName", "DropCapability",
    "Environment", "EnvironmentFile", "EnvironmentHost", "Exec", "ExposeHostPort", "Group",
    "HealthCmd", "HostName", "Image", "IP", "IP6", "Label", "LogDriver", "Mount", "Network",
    "NoNewPrivileges", "Notify", "PodmanArgs", "PublishPort", "ReadOnly", "RunInit",
    "SeccompProfile", "SecurityLabelDisable", "Tmpfs", "Timezone", "User", "UserNS", "Volume",
}  # fmt: skip
# never handed back: each one reaches past the container (kernel, devices, other processes)
FORBIDDEN_CAPABILITIES = {
    "SYS_MODULE", "SYS_RAWIO", "SYS_PTRACE", "SYS_BOOT", "SYS_TIME", "MKNOD", "NET_RAW",
    "BPF", "PERFMON", "SYS_NICE", "MAC_ADMIN", "MAC_OVERRIDE", "SYSLOG", "LINUX_IMMUTABLE",
    "AUDIT_CONTROL", "WAKE_ALARM", "BLOCK_SUSPEND", "IPC_LOCK", "LEASE", "SYS_PACCT",
    "SYS_TTY_CONFIG", "SYS_RESOURCE", "CHECKPOINT_RESTORE",
}  # fmt: skip


def unit_sections(text: str) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit's sections as (key, value) lists: keys repeat (AddCapability, Volume)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            assert current not in sections, f"section {current} twice"
            sections[current] = []
            continue
        assert current is not None and "=" in line, f"not key=value in a section: {line!r}"
        key, value = line.split("=", 1)
        sections[current].append((key, value))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


@pytest.mark.parametrize("mode", list(Mode))
def test_quadlet_is_hardened_and_sized_from_the_mode(mode):
    units = unit_sections(img.quadlet_text(mode))
    container = units["Container"]
    unknown = {k for k, _ in container} - QUADLET_CONTAINER_KEYS
    assert not unknown, f"not Quadlet keys: {unknown}"
    assert values(container, "ReadOnly") == ["true"]
    assert values(container, "NoNewPrivileges") == ["true"]
    assert values(container, "UserNS") == ["auto"]
    assert values(container, "DropCapability") == ["ALL"]
    added = {c.removeprefix("CAP_") for c in values(container, "AddCapability")}
    assert added == set(img.QUADLET_CAPABILITIES)
    assert not added & FORBIDDEN_CAPABILITIES
    # published: exactly the ports rave/components.py declares public
    assert values(container, "PublishPort") == [f"{p}:{p}" for p in public_ports()]
    # writable: only the named volumes, never the programs or the whole /etc
    mounts = [v.split(":")[1] for v in values(container, "Volume")]
    assert mounts and not {"/", "/usr", "/etc", "/bin", "/lib"} & set(mounts)
    assert all(re.fullmatch(r"rave-[a-z-]+", v.split(":")[0]) for v in values(container, "Volume"))
    (args,) = values(container, "PodmanArgs")
    memory = int(re.search(r"--memory=(\d+)m", args).group(1))
    swap = int(re.search(r"--memory-swap=(\d+)m", args).group(1))
    cpus = int(re.search(r"--cpus=(\d+)", args).group(1))
    profile = PROFILES[mode]
    assert (memory, cpus) == img.HOST_SHAPE[mode]
    assert swap == memory  # no swap beyond the memory
    # an OOM inside hits one unit's MemoryMax first; no unit's CPUQuota exceeds the container
    assert memory >= sum(limit.memory_max_mb for limit in profile.limits.values())
    assert memory >= profile.host_memory_min_mb
    assert cpus >= math.ceil(max(lim.cpu_quota_percent for lim in profile.limits.values()) / 100)
    assert values(units["Service"], "Restart") == ["on-failure"]
    assert values(units["Install"], "WantedBy") == ["multi-user.target"]


def test_the_modes_differ_in_the_quadlet():
    assert img.quadlet_text(Mode.SAFE) != img.quadlet_text(Mode.FULL_PIPE)


def test_a_mode_whose_services_outgrow_the_container_is_refused(monkeypatch):
    monkeypatch.setitem(img.HOST_SHAPE, Mode.SAFE, (1024, 2))
    with pytest.raises(img.ImageError, match="MemoryMax"):
        img.quadlet_text(Mode.SAFE)


@pytest.mark.parametrize("mode", list(Mode))
def test_qemu_unit_restarts_and_is_sized_from_the_mode(mode):
    text = img.qemu_unit_text(mode, "/srv/rave.qcow2", "/srv/vmlinuz", "/srv/initrd.img")
    service = unit_sections(text)["Service"]
    (start,) = values(service, "ExecStart")
    memory, cpus = img.HOST_SHAPE[mode]
    assert f" -m {memory} " in start and f" -smp {cpus} " in start
    assert "accel=kvm" in start and "format=qcow2" in start and "file=/srv/rave.qcow2" in start
    assert re.search(r"-serial file:/var/log/rave-vm/\S+-console\.log", start)
    assert values(service, "Restart") == ["on-failure"]


def make_root(root: Path) -> None:
    files = {
        "etc/ssh/ssh_host_ed25519_key": "PRIVATE",
        "etc/ssh/ssh_host_ed25519_key.pub": "ssh-ed25519 AAAA build",
        "etc/ssh/ssh_host_rsa_key": "PRIVATE",
        "etc/ssh/sshd_config": "deployed",
        "etc/machine-id": "0123456789abcdef0123456789abcdef\n",
        "etc/hostname": "rave-staging-1\n",
        "etc/hosts": "127.0.1.1 rave-staging-1\n",
        "etc/rave/secrets.age": "-----BEGIN AGE ENCRYPTED FILE-----",
        "etc/rave/release.json": "{}",
        "etc/sudoers.d/agent": "agent ALL=(ALL:ALL) NOPASSWD: ALL",
        "var/lib/systemd/random-seed": "seed",
        "var/log/journal/abc/system.journal": "log",
        "var/log/nginx/access.log": "10.0.0.1 GET /",
        "var/backups/rave/restic/config": "repo",
        "home/agent/.ssh/authorized_keys": "ssh-ed25519 AAAA operator",
        "home/agent/.bashrc": "kept",
        "var/lib/postgresql/15/main/PG_VERSION": "15",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_identity_is_removed_and_the_deploy_kept(tmp_path):
    root = tmp_path / "root"
    make_root(root)
    done = img.remove_identity(root)
    assert not list((root / "etc/ssh").glob("ssh_host_*"))
    assert (root / "etc/ssh/sshd_config").read_text() == "deployed"
    assert (root / "etc/machine-id").read_text() == ""
    for gone in (
        "etc/hostname",
        "etc/rave/secrets.age",
        "etc/sudoers.d/agent",
        "var/lib/systemd/random-seed",
        "home/agent/.ssh/authorized_keys",
        "var/log/journal/abc/system.journal",
        "var/backups/rave/restic/config",
    ):
        assert not (root / gone).exists(), gone
    assert (root / "var/log/nginx/access.log").read_text() == ""  # emptied, owner and mode kept
    # the deploy's directories, the release record, the database and user files stay
    assert (root / "var/log/nginx").is_dir() and (root / "var/backups/rave/restic").is_dir()
    assert (root / "etc/rave/release.json").exists()
    assert (root / "var/lib/postgresql/15/main/PG_VERSION").exists()
    assert (root / "home/agent/.bashrc").exists()
    assert "rave-staging-1" not in (root / "etc/hosts").read_text()
    assert (root / img.PRESET_PATH).read_text().strip().endswith("disable *")
    unit = root / "etc/systemd/system" / img.FIRST_BOOT_UNIT
    assert "ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key" in unit.read_text()
    link = root / "etc/systemd/system/multi-user.target.wants" / img.FIRST_BOOT_UNIT
    assert os.readlink(link) == f"/etc/systemd/system/{img.FIRST_BOOT_UNIT}"
    assert any("secrets.age" in line for line in done)
    # a second pass (an image of an image) changes nothing more and does not fail
    img.remove_identity(root)


def test_links_in_the_root_never_lead_the_removal_outside_it(tmp_path):
    """A root whose /etc/ssh or /var/log is an absolute link (as in a hostile or broken image)
    would otherwise make the build delete the control machine's own files."""
    outside = tmp_path / "control-machine"
    (outside / "ssh").mkdir(parents=True)
    (outside / "ssh/ssh_host_ed25519_key").write_text("THE CONTROL MACHINE'S KEY")
    (outside / "log").mkdir()
    (outside / "log/syslog").write_text("kept")
    root = tmp_path / "root"
    make_root(root)
    for rel, target in (("etc/ssh", outside / "ssh"), ("var/log", outside / "log")):
        for entry in sorted((root / rel).rglob("*"), reverse=True):
            entry.rmdir() if entry.is_dir() else entry.unlink()
        (root / rel).rmdir()
        (root / rel).symlink_to(target)
    (root / "var/lib/prometheus").mkdir(parents=True)
    (root / "var/lib/prometheus/metrics2").symlink_to(outside / "log")
    img.remove_identity(root)
    assert (outside / "ssh/ssh_host_ed25519_key").read_text() == "THE CONTROL MACHINE'S KEY"
    assert (outside / "log/syslog").read_text() == "kept"


def test_tarball_keeps_owners_modes_xattrs_and_links(tmp_path):
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    tool = root / "usr/bin/tool"
    tool.write_text("#!/bin/sh\n")
    os.chown(tool, 0, 0)  # before the mode: chown clears setuid
    tool.chmod(0o4755)
    data = root / "var/lib/postgresql"
    data.mkdir(parents=True)
    os.chown(data, 105, 110)
    data.chmod(0o700)
    os.setxattr(tool, "user.rave", b"kept")
    (root / "etc").mkdir()
    (root / "etc/machine-id").write_text("")
    (root / "sbin").symlink_to("usr/bin")
    tarball = tmp_path / "out/rave-image.tar.gz"
    tarball.parent.mkdir()
    img.tar_root(root, tarball)
    assert not list(tarball.parent.glob(".*partial"))
    unpacked, recipe = img.extract_root(tarball, tmp_path / "cache")
    assert recipe == f"image {img.sha256_file(tarball)}"
    assert stat.S_IMODE(unpacked.stat().st_mode) == 0o755
    got = (unpacked / "usr/bin/tool").stat()
    assert stat.S_IMODE(got.st_mode) == 0o4755 and (got.st_uid, got.st_gid) == (0, 0)
    got = (unpacked / "var/lib/postgresql").stat()
    assert (got.st_uid, got.st_gid, stat.S_IMODE(got.st_mode)) == (105, 110, 0o700)
    assert os.getxattr(unpacked / "usr/bin/tool", "user.rave") == b"kept"
    assert os.readlink(unpacked / "sbin") == "usr/bin"
    assert (unpacked / "etc/machine-id").read_text() == ""
    # unpacked once: a second call finds it by its checksum
    assert img.extract_root(tarball, tmp_path / "cache") == (unpacked, recipe)


def test_the_cli_prints_the_units_without_root(capsys, monkeypatch):
    from rave import staging

    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # printing needs no privileges
    assert staging.main(["image", "quadlet", "--mode", "FULL_PIPE"]) == 0
    assert "--memory=4096m" in capsys.readouterr().out
    assert staging.main(["image", "qemu-unit", "--mode", "SAFE", "--disk", "/d.qcow2"]) == 0
    assert "file=/d.qcow2" in capsys.readouterr().out
    assert staging.main(["image", "build"]) == 2  # building does


def test_a_host_remembers_the_image_it_boots_from(tmp_path):
    from rave import staging

    host = staging.Instance(7, tmp_path / ".staging").host(1)
    assert host.image() is None
    host.dir.mkdir(parents=True)
    host.image_file.write_text("not json")
    assert host.image() is None  # a damaged record boots the cached root, never half an image
    host.image_file.write_text('{"root": "/var/cache/x/root", "recipe": "image abc"}')
    assert host.image() == {"root": "/var/cache/x/root", "recipe": "image abc"}


def test_the_first_boot_unit_prints_what_boot_check_looks_for(tmp_path):
    """The unit's console line (run as systemd would: `$$` is a literal `$`, the line joined)
    and boot-check's pattern must agree, or `image boot-check` waits for ever."""
    import shlex
    import subprocess

    from rave.staging_image import LOGIN_PROMPT, NEW_KEY

    key = tmp_path / "ssh_host_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    unit = img.FIRST_BOOT_UNIT_TEXT.replace("\\\n", "")
    (line,) = [v for k, v in unit_sections(unit)["Service"] if k == "ExecStartPost"]
    argv = shlex.split(line.replace("$$", "$").replace("/etc/ssh/ssh_host_ed25519_key", str(key)))
    printed = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    fingerprint = subprocess.run(
        ["ssh-keygen", "-lf", f"{key}.pub"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    match = NEW_KEY.search(printed)
    assert match and match.group(1) == fingerprint
    assert LOGIN_PROMPT.search("Debian GNU/Linux 12 rave ttyS0\n\nrave login: ")
    assert not LOGIN_PROMPT.search("Starting systemd-logind.service - User Login Management...")


def test_two_unpackers_of_one_image_at_once_both_get_it_whole(tmp_path):
    """`up --image` and `image qcow2` started together once raced: one deleted the other's
    half-unpacked directory and failed."""
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for n in range(200):
        (root / "etc" / f"f{n}").write_text("x" * 4096)
    tarball = tmp_path / "rave-image.tar.gz"
    img.tar_root(root, tarball)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: img.extract_root(tarball, tmp_path / "cache"), [1, 2]))
    assert results[0] == results[1]
    assert len(list((results[0][0] / "etc").iterdir())) == 200
