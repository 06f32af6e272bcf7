"""rave.staging_vm without booting anything: names, the qemu command line, the ssh files."""

import json

import pytest

from rave import staging, staging_vm


@pytest.fixture
def instance(tmp_path):
    # only names and files: nothing here may start or stop anything of a live instance
    return staging.Instance(7, tmp_path / ".staging")


def test_the_vm_lives_on_the_instance_bridge_next_to_the_containers(instance):
    vm = staging_vm.vm_host(instance)
    assert (vm.name, vm.address, vm.tap) == ("rave-staging-vm", "10.213.7.100", "rv7vm")
    assert vm.address6 == "fd52:a7e0:7::100"
    container_addresses = {instance.host(i).address for i in range(1, staging.MAX_HOSTS + 1)}
    assert vm.address not in container_addresses
    assert len(staging_vm.vm_host(staging.Instance(254)).tap) <= 15  # IFNAMSIZ - 1
    assert vm.mac != staging_vm.vm_host(staging.Instance(8)).mac


def test_qemu_uses_only_a_tap_on_the_bridge_and_boots_the_kernel_directly(instance, tmp_path):
    vm = staging_vm.vm_host(instance)
    kernel, initrd = tmp_path / "vmlinuz-x", tmp_path / "initrd.img-x"
    command = staging_vm.qemu_command(vm, "tcg", kernel, initrd)
    joined = " ".join(command)
    assert "-nodefaults" in command  # no default (user-mode) network device
    netdevs = [command[i + 1] for i, arg in enumerate(command) if arg == "-netdev"]
    assert netdevs == [f"tap,id=net0,ifname={vm.tap},script=no,downscript=no"]
    assert "user" not in joined.split() and "slirp" not in joined and "hostfwd" not in joined
    assert command[command.index("-kernel") + 1] == str(kernel)
    assert command[command.index("-initrd") + 1] == str(initrd)
    assert "audit=1" in command[command.index("-append") + 1]
    assert command[command.index("-accel") + 1].startswith("tcg")
    kvm = staging_vm.qemu_command(vm, "kvm", kernel, initrd)
    assert kvm[kvm.index("-accel") + 1] == "kvm"
    assert vm.qemu_name in command  # how pid() and up's leftover sweep recognise it


def test_the_ssh_files_keep_the_vm_next_to_the_containers(instance):
    instance.state.mkdir(parents=True)
    staging.ensure_operator_key(instance)
    vm = staging_vm.vm_host(instance)
    vm.dir.mkdir(parents=True)
    staging.ensure_host_key(vm)
    staging_vm.write_vm_state(vm, "tcg")
    host = instance.host(1)
    staging.ensure_host_key(host)
    staging.write_state_files(instance, [host])  # a container `up` must not drop the VM

    assert [e["name"] for e in json.loads(instance.hosts_json.read_text())] == ["rave-staging-1"]
    config = instance.ssh_config.read_text()
    assert "Host rave-staging-vm 10.213.7.100\n    HostName 10.213.7.100\n" in config
    known = instance.known_hosts.read_text()
    assert f"rave-staging-vm,10.213.7.100,fd52:a7e0:7::100 {vm.host_public_key()}" in known
    entry = json.loads(vm.json_file.read_text())[0]
    assert (entry["address"], entry["accel"]) == ("10.213.7.100", "tcg")


def test_a_changed_recipe_rebuilds_the_disk(instance):
    vm = staging_vm.vm_host(instance)
    vm.dir.mkdir(parents=True)
    vm.disk.write_bytes(b"")
    assert not staging_vm.disk_current(vm)
    (vm.dir / "disk-recipe").write_text(staging_vm.VM_RECIPE + "\n")
    assert staging_vm.disk_current(vm)
    (vm.dir / "disk-recipe").write_text("0 an older recipe\n")
    assert not staging_vm.disk_current(vm)


def test_a_forced_acceleration_is_validated(instance, monkeypatch, tmp_path):
    monkeypatch.setenv("RAVE_STAGING_VM_ACCEL", "hvf")
    with pytest.raises(staging.StagingError, match="RAVE_STAGING_VM_ACCEL"):
        staging_vm.boot(staging_vm.vm_host(instance), tmp_path / "k", tmp_path / "i")
