"""Inventory of the local staging hosts (rave-staging up writes .staging/hosts.json).

pyinfra puts every host here into the groups `rave` and `staging` (the file name), so
group_data/all.py and group_data/staging.py apply. With RAVE_STAGING_MONITORING=1 the last host
is the monitoring host instead (group `monitoring`, rave/topology.py), e.g.
`rave-staging up --hosts 3` then `RAVE_STAGING_MONITORING=1 pyinfra inventories/staging.py ...`:
two service hosts and one monitoring host.
"""

import json
import os
import sys

from rave.staging import Instance, instance_id


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
    entries = json.loads(hosts_file.read_text())
    return [(entry["name"], instance.inventory_data(entry["address"])) for entry in entries]


_hosts = _staging_hosts()
if os.environ.get("RAVE_STAGING_MONITORING") == "1":
    if len(_hosts) < 2:
        sys.exit("--> RAVE_STAGING_MONITORING=1 needs at least 2 staging hosts (up --hosts 3)")
    rave, monitoring = _hosts[:-1], _hosts[-1:]
else:
    rave = _hosts
