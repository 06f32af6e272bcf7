"""Settings of the edge concern."""

from __future__ import annotations

from rave.settings.base import Concern


class EdgeSettings(Concern):
    pass
