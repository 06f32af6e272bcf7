"""Project services on every host of the inventory: status, start, stop, restart, logs.

    pyinfra inventories/staging.py ops/service.py                       # status table
    pyinfra -y inventories/staging.py ops/service.py --data ops_action=restart \
        --data ops_services=webhook,nginx
    pyinfra inventories/staging.py ops/service.py --data ops_action=logs --data ops_journal_lines=50

Only units that exist on the host are touched (components come from rave/components.py).
`stop`/`restart` without ops_services leave sshd alone. `rave-ops` wraps these runs.
"""

import click
from pyinfra import host, state
from pyinfra.operations import systemd

from rave.deploykit import settings
from rave.facts import JournalTail, ProjectServices
from rave.ops import report, services

config = settings()
present = host.get_fact(ProjectServices)
action = config.ops_action
chosen = services.targets(present, config.ops_services, action)

if action == "status":
    everything = report.collect(
        "service-status", host.name, present, len(state.inventory.get_active_hosts())
    )
    if everything is not None:
        click.echo(services.status_table(everything))

elif action == "logs":
    units = [services.unit_of(name) for name in chosen]
    tails = host.get_fact(JournalTail, units=units, lines=config.ops_journal_lines)
    for unit, lines in tails.items():
        click.echo(f"==> {host.name} {unit}")
        click.echo("\n".join(lines) if lines else "(no journal lines)")

else:
    for name in chosen:
        unit = services.unit_of(name)
        systemd.service(
            name=f"{action.capitalize()} {name} ({unit})",
            service=unit,
            running=action != "stop",
            restarted=action == "restart",
        )
