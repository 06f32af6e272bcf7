"""The webhook receiver's dead letters on each host: list, show, redrive or discard.

    RAVE_OPS_DEAD_LETTERS='["list"]' pyinfra -y inventories/staging.py ops/dead_letters.py
    RAVE_OPS_DEAD_LETTERS='["redrive", "--all"]' \
        pyinfra -y inventories/staging.py ops/dead_letters.py

`rave-ops dead-letters list|show ID|redrive ID|--all|discard ID|--all` wraps this run
(rave/ops/deadletters.py). It runs the receiver's own command as the receiver's user and prints
its output; the run fails on a host where the command failed (a redrive still refused, or no
such letter). Only `show` prints a letter's payload. Hosts without the receiver are skipped.
"""

import os

import click
from pyinfra import host
from pyinfra.api.exceptions import PyinfraError
from pyinfra.operations import python

from rave.facts import ProjectServices
from rave.ops.deadletters import ENV, decode, host_command

try:
    ARGS = decode(os.environ.get(ENV))
except ValueError as error:
    raise PyinfraError(str(error)) from None


def run_and_print(command: str, label: str) -> None:
    ok, output = host.run_shell_command(command, _sudo=True, print_output=False, print_input=False)
    click.echo(f"--- {host.name}: dead-letters {label}")
    for line in output.output_lines:
        click.echo(line)
    if not ok:
        raise PyinfraError(f"{host.name}: dead-letters {label} failed (output above)")


label = " ".join(ARGS)
if host.get_fact(ProjectServices).get("webhook", {}).get("present"):
    python.call(
        name=f"Webhook dead letters: {label}",
        function=run_and_print,
        command=host_command(ARGS),
        label=label,
    )
else:
    click.echo(f"--- {host.name}: no webhook receiver on this host")
