"""All settings a host may carry, declared once (type, default, meaning).

Each concern owns one class in this package; HostSettings combines them. Unknown keys are
refused, so a typo in group_data fails the deploy before any host is touched.
"""

from __future__ import annotations

from functools import cached_property

from rave.modes import PROFILES, ResourceProfile
from rave.settings.backup import BackupSettings
from rave.settings.base import BaseSettings
from rave.settings.ccr import CcrSettings
from rave.settings.debug import DebugSettings
from rave.settings.edge import EdgeSettings
from rave.settings.hardening import HardeningSettings
from rave.settings.observability import ObservabilitySettings
from rave.settings.ops import OpsSettings
from rave.settings.secrets import SecretsSettings
from rave.settings.topology import TopologySettings
from rave.settings.vulnscan import VulnscanSettings

# keys that belong to pyinfra itself (connector settings, global arguments such as _sudo)
PASSTHROUGH_PREFIXES = ("_",)


class HostSettings(
    BaseSettings,
    HardeningSettings,
    SecretsSettings,
    EdgeSettings,
    ObservabilitySettings,
    BackupSettings,
    TopologySettings,
    CcrSettings,
    VulnscanSettings,
    OpsSettings,
    DebugSettings,
):
    @cached_property
    def profile(self) -> ResourceProfile:
        return PROFILES[self.rave_mode]


__all__ = ["PASSTHROUGH_PREFIXES", "HostSettings"]
