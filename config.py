"""pyinfra loads this file before the inventory: hook host-data validation in before connecting.

pyinfra has no pre-connect hook, so State.init (called once the inventory is loaded and
before connect_all) is wrapped; see docs/adr/0003-validate-before-connect.md.
"""

import sys

from pyinfra.api.state import State

from rave import speedups
from rave.validation import HostDataError, login_checks_apply, validate_inventory

speedups.apply()  # ~40 ms less per command, ~10 ms less per operation (rave/speedups.py)

_original_init = State.init


def _validating_init(self, inventory, config, *args, **kwargs):
    files = [arg for arg in sys.argv[1:] if arg.endswith(".py")]
    inventory_file = files[0] if files else "the inventory"
    try:
        validate_inventory(inventory, inventory_file, login_checks=login_checks_apply(files[1:]))
    except HostDataError as error:
        sys.stderr.write(f"--> Refusing to connect: {error}\n")
        raise SystemExit(2) from None
    return _original_init(self, inventory, config, *args, **kwargs)


State.init = _validating_init  # type: ignore[method-assign]
