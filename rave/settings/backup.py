"""Settings of the backup concern."""

from __future__ import annotations

from rave.settings.base import Concern


class BackupSettings(Concern):
    pass
