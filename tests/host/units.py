"""Starting units on a staging host, with the one retry the staging containers need.

systemd inside the nspawn containers (cgroup v1 on this machine's kernel) sometimes cannot set
up a unit's cgroup right after its previous run: "Failed to kill control group ... Input/output
error", then status=219/CGROUP, and the unit's program never ran. Only that case is started
again, once; any failure of the program itself is returned as it is.
"""

from __future__ import annotations

import time
from typing import Any

CGROUP_SETUP_FAILED = "219"


def start_unit(host: Any, unit: str, extra: str = "") -> Any:
    """`systemctl start [extra] unit`; testinfra's CommandResult of the last attempt."""
    result = host.run(f"systemctl start {extra} {unit}")
    if result.rc != 0:
        status = host.run(f"systemctl show -p ExecMainStatus --value {unit}").stdout.strip()
        if status == CGROUP_SETUP_FAILED:
            time.sleep(3)
            result = host.run(f"systemctl start {extra} {unit}")
    return result
