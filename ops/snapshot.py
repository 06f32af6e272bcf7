"""Take (before an update) or restore (its rollback) the snapshot of the managed configuration.

    pyinfra -y inventories/staging.py ops/snapshot.py --data ops_snapshot=take
    pyinfra -y inventories/staging.py ops/snapshot.py --data ops_snapshot=restore

What a restore covers and what it does not: rave/ops/snapshot.py, docs/operations.md.
"""

from pyinfra.operations import server

from rave.deploykit import settings
from rave.ops.snapshot import restore_script, take_script

if settings().ops_snapshot == "take":
    server.shell(name="Snapshot the managed configuration", commands=[take_script()])
else:
    server.shell(name="Restore the managed configuration snapshot", commands=[restore_script()])
