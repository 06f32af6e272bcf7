"""Validate deployed hosts in six stages; prints one pass/fail table, fails the run on a FAIL.

    pyinfra inventories/staging.py ops/validate.py
    pyinfra inventories/staging.py ops/validate.py --data ops_validate_from_control=false

Stages: connectivity, security, services, ports, application, resources (rave/ops/validate.py).
Read-only: it adds no operations. `rave-ops validate` wraps this run.
"""

import click
from pyinfra import host, state
from pyinfra.api.exceptions import PyinfraError

from rave.deploykit import settings
from rave.ops import report
from rave.ops.validate import checks_for_current_host
from rave.ops.validate import report as validation_report

checks = checks_for_current_host(host, settings())
expected = len(state.inventory.get_active_hosts())
everything = report.collect("validation", host.name, checks, expected)
if everything is not None:
    every_check = [check for host_checks in everything.values() for check in host_checks]
    click.echo(validation_report(every_check))
    failed = sorted({f"{c.host}: {c.stage}/{c.name}" for c in every_check if not c.ok})
    if failed:
        raise PyinfraError(f"validation FAILED ({len(failed)} checks): " + "; ".join(failed))
