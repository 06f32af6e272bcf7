"""Inventory of the staging VM (`rave-staging vm up` writes .staging/vm/vm.json).

The VM is in the groups `rave` and `staging` like a staging container, so group_data/staging.py
applies (egress proxy, the operator key); the groups are named here because pyinfra names the
file's own group after the file (`staging_vm`). docs/staging.md, "A VM".
"""

import json
import sys

from rave.staging import Instance, instance_id
from rave.staging_vm import vm_host


def _vm_hosts() -> list[tuple[str, dict]]:
    instance = Instance(instance_id())
    vm = vm_host(instance)
    if not vm.json_file.exists():
        sys.exit(
            f"--> No staging VM: {vm.json_file} is missing. Run `.venv/bin/rave-staging vm up` "
            f"(RAVE_STAGING_ID={instance.id}) first."
        )
    entries = json.loads(vm.json_file.read_text())
    return [(entry["name"], instance.inventory_data(entry["address"])) for entry in entries]


staging = _vm_hosts()
rave = staging
