"""Settings of the secrets concern."""

from __future__ import annotations

from rave.settings.base import Concern


class SecretsSettings(Concern):
    pass
