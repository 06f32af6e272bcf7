"""Settings of the operations runs (ops/*.py): what to do, chosen per run with --data."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from rave.settings.base import Concern


class OpsSettings(Concern):
    ops_action: Literal["status", "start", "stop", "restart", "logs"] = Field(
        "status", description="ops/service.py: what to do with the project services"
    )
    ops_services: list[str] = Field(
        default_factory=list,
        description="component names (rave/components.py) to act on; empty means all present",
    )
    ops_journal_lines: int = Field(
        30, ge=1, le=2000, description="ops/service.py logs: journal lines per service"
    )
    ops_validate_from_control: bool = Field(
        True,
        description="ops/validate.py: also probe ports and HTTPS from the control machine "
        "(false on the host's own timer)",
    )

    ops_validate_force_failure: bool = Field(
        False,
        description="ops/validate.py: add one failing check (to exercise the update rollback)",
    )
    ops_snapshot: Literal["take", "restore"] = Field(
        "take", description="ops/snapshot.py: take the pre-update snapshot or restore it"
    )
    ops_update: Literal["security", "minor"] = Field(
        "security", description="ops/update.py: which package update to apply"
    )
    ops_major_component: str = Field(
        "ccr", description="ops/major.py: the component of a major update (rave/ops/major.py)"
    )
    ops_major_action: Literal["save", "settle", "restore", "discard"] = Field(
        "save", description="ops/major.py: save, wait for, restore or discard its software"
    )
    ops_major_settle_seconds: int = Field(
        60, ge=1, le=600, description="ops/major.py settle: how long to wait for the service"
    )

    @field_validator("ops_major_component")
    @classmethod
    def _automated(cls, value: str) -> str:
        from rave.ops.major import AUTOMATED

        if value not in AUTOMATED:
            raise ValueError(f"no automated major update for {value!r}; known: {sorted(AUTOMATED)}")
        return value

    @field_validator("ops_services", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("ops_services")
    @classmethod
    def _known_components(cls, value: list[str]) -> list[str]:
        from rave.components import BY_NAME

        unknown = [name for name in value if name not in BY_NAME]
        if unknown:
            raise ValueError(f"unknown component(s) {unknown}; known: {sorted(BY_NAME)}")
        return value
