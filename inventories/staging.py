"""Inventory of the local staging hosts (rave-staging up writes .staging/hosts.json).

pyinfra puts every host here into the groups `rave` and `staging` (the file name), so
group_data/all.py and group_data/staging.py apply.
"""

import json
import sys

from rave.staging import OPERATOR, Instance, instance_id


def _staging_hosts() -> list[tuple[str, dict]]:
    instance = Instance(instance_id())
    hosts_file = instance.state / "hosts.json"
    if not hosts_file.exists():
        sys.exit(
            f"--> No staging hosts: {hosts_file} is missing. Run `make staging` "
            "(or `.venv/bin/rave-staging up`) first."
        )
    recorded = (instance.state / "instance-id").read_text().strip()
    if recorded != str(instance.id):
        sys.exit(
            f"--> {instance.state} holds staging instance {recorded}, but RAVE_STAGING_ID is "
            f"{instance.id}. Use RAVE_STAGING_ID={recorded} or run `rave-staging up` first."
        )
    return [
        (
            entry["name"],
            {
                "ssh_hostname": entry["address"],
                "ssh_user": OPERATOR,
                "ssh_key": str(instance.key),
                "ssh_known_hosts_file": str(instance.known_hosts),
                "ssh_strict_host_key_checking": "yes",
                "_sudo": True,
            },
        )
        for entry in json.loads(hosts_file.read_text())
    ]


rave = _staging_hosts()
