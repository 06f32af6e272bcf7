"""Debug mode: verbose logs for troubleshooting, loud while on (docs/operations.md)."""

from __future__ import annotations

from typing import Final

from pydantic import Field

from rave.settings.base import Concern

# off unless an operator turns it on; production also needs debug_mode_acknowledged
DEBUG_MODE_DEFAULT: Final = False


class DebugSettings(Concern):
    debug_mode: bool = Field(
        DEBUG_MODE_DEFAULT,
        description="verbose logs of the webhook receiver, nginx and the exporters; while on, "
        "rave_debug_mode is 1, the DebugModeOn alert fires and the status page says so",
    )
    debug_mode_acknowledged: bool = Field(
        False,
        description="a production host (rave_environment other than staging) may run in debug "
        "mode only with this set, in the same file as debug_mode",
    )
