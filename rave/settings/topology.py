"""Settings derived from the inventory's groups (rave/topology.py); set them only to override."""

from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator

from rave.settings.base import Concern


class TopologySettings(Concern):
    monitoring_role: bool = Field(
        False, description="this host is a monitoring host (derived: inventory group `monitoring`)"
    )
    host_address: str | None = Field(
        None,
        description="this host's address as other hosts reach it (derived: ssh_hostname); "
        "(the monitoring host scrapes service hosts there)",
    )
    monitoring_addresses: list[str] = Field(
        default_factory=list,
        description="addresses of the monitoring host(s) that scrape this host's exporters "
        "(derived: the `monitoring` group's hosts); empty: the host monitors itself only",
    )
    monitoring_scrape_hosts: dict[str, str] = Field(
        default_factory=dict,
        description="on a monitoring host: service host name -> address whose exporters it "
        "scrapes (derived: the `rave` group's hosts)",
    )

    @field_validator("host_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        return None if value is None else str(ipaddress.ip_address(value))

    @field_validator("monitoring_addresses")
    @classmethod
    def _addresses(cls, values: list[str]) -> list[str]:
        return [str(ipaddress.ip_address(v)) for v in values]

    @field_validator("monitoring_scrape_hosts")
    @classmethod
    def _scrape_hosts(cls, values: dict[str, str]) -> dict[str, str]:
        return {name: str(ipaddress.ip_address(v)) for name, v in values.items()}
