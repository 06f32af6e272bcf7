"""Resource modes: each a complete profile, chosen by the one `rave_mode` setting."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class Mode(StrEnum):
    SAFE = "SAFE"  # a 2 GB host
    FULL_PIPE = "FULL_PIPE"  # a 4 GB host


class ServiceLimits(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    memory_max_mb: int = Field(gt=0, description="systemd MemoryMax for the unit")
    cpu_quota_percent: int = Field(gt=0, le=400, description="systemd CPUQuota for the unit")


class ResourceProfile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host_memory_min_mb: int
    limits: dict[str, ServiceLimits]  # by component name
    prometheus_retention_time: str
    prometheus_retention_size: str
    scrape_interval: str
    postgres_shared_buffers_mb: int
    postgres_max_connections: int
    webhook_workers: int

    def limits_for(self, component: str) -> ServiceLimits:
        return self.limits[component]


def _limits(**by_component: tuple[int, int]) -> dict[str, ServiceLimits]:
    return {
        name: ServiceLimits(memory_max_mb=mb, cpu_quota_percent=cpu)
        for name, (mb, cpu) in by_component.items()
    }


PROFILES: dict[Mode, ResourceProfile] = {
    Mode.SAFE: ResourceProfile(
        host_memory_min_mb=1800,
        limits=_limits(
            nginx=(128, 100),
            webhook=(192, 100),
            postgresql=(384, 100),
            prometheus=(256, 50),
            alertmanager=(64, 25),
            grafana=(128, 50),  # the seed's SAFE figure (P6 summary: "Grafana: 128MB limit")
            node_exporter=(64, 25),
            postgres_exporter=(64, 25),
            nginx_exporter=(32, 25),
            ccr=(192, 50),
            backup=(256, 100),
        ),
        prometheus_retention_time="3d",
        prometheus_retention_size="1GB",
        scrape_interval="30s",
        postgres_shared_buffers_mb=96,
        postgres_max_connections=40,
        webhook_workers=1,
    ),
    Mode.FULL_PIPE: ResourceProfile(
        host_memory_min_mb=3600,
        limits=_limits(
            nginx=(256, 200),
            webhook=(384, 200),
            postgresql=(1024, 200),
            prometheus=(512, 100),
            alertmanager=(128, 50),
            grafana=(256, 100),  # the seed's FULL_PIPE figure ("Grafana: 256MB limit")
            node_exporter=(128, 50),
            postgres_exporter=(128, 50),
            nginx_exporter=(64, 50),
            ccr=(384, 100),
            backup=(512, 100),
        ),
        prometheus_retention_time="7d",
        prometheus_retention_size="4GB",
        scrape_interval="15s",
        postgres_shared_buffers_mb=256,
        postgres_max_connections=100,
        webhook_workers=2,
    ),
}
