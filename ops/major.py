"""One step of a component's major update (run by `rave-ops update major`, which adds the
backup, the configuration snapshot, the deploy with the new version, validation and rollback).

    pyinfra -y INV ops/major.py --data ops_major_component=ccr --data ops_major_action=save

save: keep the installed software tree and its version; settle: wait until the restarted
service is up; restore: put the saved tree back and restart (the rollback); discard: drop the
saved tree after a validated update. Scripts: rave/ops/major.py.
"""

from pyinfra import host
from pyinfra.operations import python

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


def run_and_print(label: str, script: str) -> None:
    """Run one step's script as root and show its output (the operator reads what it did)."""
    ok, output = host.run_shell_command(script, _sudo=True, print_input=False)
    for line in output.output_lines:
        print(f"    {host.name}: {line}")
    if not ok:
        raise RuntimeError(f"{host.name}: {label} failed (output above)")


config = settings()
software = SOFTWARE[config.ops_major_component]
steps = {
    "save": (f"Save the installed {software.component} ({software.tree})", major.save_script),
    "restore": (f"Put the saved {software.component} back and restart it", major.restore_script),
    "discard": (f"Drop the saved {software.component}", major.discard_script),
}
if config.ops_major_action == "settle":
    label = f"Wait for {software.unit} to be up"
    script = major.settle_script(software, config.ops_major_settle_seconds)
else:
    label, build = steps[config.ops_major_action]
    script = build(software)
python.call(name=label, function=run_and_print, label=label, script=script)
