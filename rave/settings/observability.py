"""Settings of the observability concern."""

from __future__ import annotations

from rave.settings.base import Concern


class ObservabilitySettings(Concern):
    pass
