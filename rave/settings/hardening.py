"""Settings of the hardening concern."""

from __future__ import annotations

from rave.settings.base import Concern


class HardeningSettings(Concern):
    pass
