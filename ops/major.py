"""One step of a component's major update (run by `rave-ops update major`, which adds the
backup, the configuration snapshot, the deploy with the new version, validation and rollback).

    pyinfra -y INV ops/major.py --data ops_major_component=ccr --data ops_major_action=save

save: keep the installed software tree and its version; settle: wait until the restarted
service is up; restore: put the saved tree back and restart (the rollback); discard: drop the
saved tree after a validated update. Scripts: rave/ops/major.py.
"""

from pyinfra.operations import server

from rave.deploykit import settings
from rave.ops import major
from tasks import ccr

SOFTWARE = {
    "ccr": major.Software(
        component="ccr",
        unit=ccr.UNIT,
        port=ccr.port(),
        tree=ccr.PREFIX,
        version_file=ccr.PACKAGE_JSON,
    ),
}

config = settings()
software = SOFTWARE[config.ops_major_component]
action = config.ops_major_action
if action == "save":
    server.shell(
        name=f"Save the installed {software.component} ({software.tree})",
        commands=[major.save_script(software)],
    )
elif action == "settle":
    server.shell(
        name=f"Wait for {software.unit} to be up",
        commands=[major.settle_script(software, config.ops_major_settle_seconds)],
    )
elif action == "restore":
    server.shell(
        name=f"Put the saved {software.component} back and restart it",
        commands=[major.restore_script(software)],
    )
else:
    server.shell(
        name=f"Drop the saved {software.component}", commands=[major.discard_script(software)]
    )
