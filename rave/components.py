"""Every component of the RAVE host, declared once.

Firewall rules, nginx routes, Prometheus scrape targets, backup paths, secret ownership,
health checks and the testinfra parametrisation are all derived from COMPONENTS.
"""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Exposure(StrEnum):
    PUBLIC = "public"  # open in the firewall to everyone
    LOOPBACK = "loopback"  # bound to 127.0.0.1 only, never opened
    MONITORING = "monitoring"  # loopback, plus the monitoring host's address when there is one


class Port(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    number: int = Field(ge=1, le=65535)
    exposure: Exposure
    purpose: str


class Route(BaseModel):
    """A location behind nginx on the public TLS port."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    upstream_port: int
    methods: tuple[str, ...] = ()  # empty: any method
    auth: bool = False  # protected by the edge's basic auth
    upstream_path: str = ""  # replaces `path` towards the upstream (empty: passed unchanged)
    # public paths under `path` that nginx refuses (404), with everything below them and in any
    # letter case: e.g. the upstream's own Prometheus metrics (scraped on loopback instead)
    refused: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _refused_below_path(self) -> Route:
        for refused in self.refused:
            if not refused.startswith(self.path) or not re.fullmatch(r"/[A-Za-z0-9_/-]+", refused):
                raise ValueError(f"refused path {refused!r}: not a plain path below {self.path}")
        return self


class Metrics(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    port: int
    path: str = "/metrics"
    job: str


class Component(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    unit: str  # systemd unit name, without .service
    packages: tuple[str, ...] = ()
    user: str | None = None  # service account that owns its secrets
    ports: tuple[Port, ...] = ()
    route: Route | None = None  # its entry point (listed on the status page)
    extra_routes: tuple[Route, ...] = ()  # further locations it needs, e.g. the API its UI calls
    metrics: Metrics | None = None
    backup_paths: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()  # names in the secrets model this component reads
    # of those, the ones only a root process reads (the nginx master's TLS key): root:root 0400,
    # never readable by the service account its workers run as
    root_only_secrets: tuple[str, ...] = ()
    owned_unit: bool = False  # the project writes this unit file itself
    optional: bool = False  # may be left out (e.g. a package source this host cannot reach)
    scheduled: bool = False  # a oneshot run by <unit>.timer; the timer is what must stay active

    @model_validator(mode="after")
    def _root_only_are_secrets(self) -> Component:
        unknown = set(self.root_only_secrets) - set(self.secrets)
        if unknown:
            raise ValueError(f"{self.name}: root_only_secrets not in secrets: {sorted(unknown)}")
        return self

    @property
    def watched_unit(self) -> str:
        """The unit that must be active while the host is healthy."""
        if "." in self.unit:
            return self.unit
        return f"{self.unit}.timer" if self.scheduled else f"{self.unit}.service"


COMPONENTS: tuple[Component, ...] = (
    Component(
        name="sshd",
        unit="ssh",
        packages=("openssh-server",),
        ports=(Port(number=22, exposure=Exposure.PUBLIC, purpose="operator SSH"),),
        backup_paths=("/etc/ssh",),
    ),
    Component(
        name="nginx",
        unit="nginx",
        packages=("nginx-light",),
        user="www-data",
        ports=(
            Port(number=3002, exposure=Exposure.PUBLIC, purpose="TLS edge"),
            Port(number=8081, exposure=Exposure.LOOPBACK, purpose="stub_status"),
        ),
        secrets=("tls_certificate", "tls_private_key", "ccr_ui_password_hash"),
        root_only_secrets=("tls_private_key",),
        backup_paths=("/etc/nginx",),
    ),
    Component(
        name="postgresql",
        unit="postgresql@15-main",
        packages=("postgresql-15",),
        user="postgres",
        ports=(Port(number=5432, exposure=Exposure.LOOPBACK, purpose="PostgreSQL"),),
        # the pgBackRest cipher pass: archive-push runs as postgres (PostgreSQL's archive_command)
        secrets=(
            "postgres_webhook_password",
            "postgres_exporter_password",
            "backup_pgbackrest_cipher_password",
        ),
    ),
    Component(
        name="webhook",
        unit="rave-webhook",
        packages=(
            "python3-starlette",
            "python3-uvicorn",
            "python3-psycopg",
            "python3-prometheus-client",
        ),
        user="rave-webhook",
        ports=(Port(number=8001, exposure=Exposure.LOOPBACK, purpose="webhook receiver"),),
        route=Route(path="/webhook", upstream_port=8001, methods=("POST",)),
        metrics=Metrics(port=8001, job="webhook"),
        secrets=(
            "webhook_hmac_secrets",
            "webhook_standard_secrets",
            "webhook_gitlab_tokens",
            "postgres_webhook_password",
        ),
        backup_paths=("/var/lib/rave-webhook",),
        owned_unit=True,
    ),
    Component(
        name="prometheus",
        unit="prometheus",
        packages=("prometheus",),
        user="prometheus",
        ports=(Port(number=9090, exposure=Exposure.LOOPBACK, purpose="Prometheus"),),
        metrics=Metrics(port=9090, job="prometheus"),
        backup_paths=("/etc/prometheus",),
    ),
    Component(
        name="alertmanager",
        unit="prometheus-alertmanager",
        packages=("prometheus-alertmanager",),
        user="prometheus",
        ports=(Port(number=9093, exposure=Exposure.LOOPBACK, purpose="Alertmanager"),),
        metrics=Metrics(port=9093, job="alertmanager"),
        secrets=("alertmanager_receivers",),
    ),
    Component(
        name="node_exporter",
        unit="prometheus-node-exporter",
        packages=("prometheus-node-exporter",),
        user="prometheus",
        ports=(Port(number=9100, exposure=Exposure.MONITORING, purpose="node exporter"),),
        metrics=Metrics(port=9100, job="node"),
    ),
    Component(
        name="postgres_exporter",
        unit="prometheus-postgres-exporter",
        packages=("prometheus-postgres-exporter",),
        user="prometheus",
        ports=(Port(number=9187, exposure=Exposure.MONITORING, purpose="postgres exporter"),),
        metrics=Metrics(port=9187, job="postgres"),
        secrets=("postgres_exporter_password",),
    ),
    Component(
        name="nginx_exporter",
        unit="prometheus-nginx-exporter",
        packages=("prometheus-nginx-exporter",),
        user="prometheus",
        ports=(Port(number=9113, exposure=Exposure.MONITORING, purpose="nginx exporter"),),
        metrics=Metrics(port=9113, job="nginx"),
    ),
    Component(
        name="grafana",
        unit="grafana-server",
        packages=("grafana",),
        user="grafana",
        ports=(Port(number=3030, exposure=Exposure.LOOPBACK, purpose="Grafana"),),
        # Grafana serves its own Prometheus metrics under its sub-path: scraped on loopback only
        route=Route(path="/grafana/", upstream_port=3030, refused=("/grafana/metrics",)),
        metrics=Metrics(port=3030, job="grafana"),
        secrets=("grafana_admin_password",),
        backup_paths=("/var/lib/grafana", "/etc/grafana"),
        optional=True,
    ),
    Component(
        name="ccr",
        unit="rave-ccr",
        user="rave-ccr",
        ports=(Port(number=3456, exposure=Exposure.LOOPBACK, purpose="Claude Code Router"),),
        route=Route(path="/ccr-ui/", upstream_port=3456, auth=True, upstream_path="/ui/"),
        # the UI is served from /ui/ but calls the absolute path /api/ (config, transformers, ...)
        extra_routes=(Route(path="/api/", upstream_port=3456, auth=True),),
        secrets=("ccr_api_keys",),
        owned_unit=True,
        optional=True,
    ),
    Component(
        name="backup",
        unit="rave-backup",
        packages=("restic", "pgbackrest", "python3-psycopg"),
        user="root",
        secrets=(
            "backup_repository_password",
            "backup_repository_previous_password",
            "backup_repository_env",
            "backup_sftp_private_key",
            "backup_sftp_known_hosts",
        ),
        owned_unit=True,
        scheduled=True,
    ),
)

BY_NAME: dict[str, Component] = {component.name: component for component in COMPONENTS}


def component(name: str) -> Component:
    return BY_NAME[name]


def public_ports() -> list[int]:
    return sorted({p.number for c in COMPONENTS for p in c.ports if p.exposure is Exposure.PUBLIC})


def monitoring_ports() -> list[int]:
    return sorted(
        {p.number for c in COMPONENTS for p in c.ports if p.exposure is Exposure.MONITORING}
    )


def loopback_ports() -> list[int]:
    return sorted(
        {p.number for c in COMPONENTS for p in c.ports if p.exposure is not Exposure.PUBLIC}
    )


def routes() -> list[Route]:
    return [
        route
        for c in COMPONENTS
        for route in ((c.route,) if c.route is not None else ()) + c.extra_routes
    ]


def scrape_targets(enabled: set[str] | None = None) -> list[Metrics]:
    return [
        c.metrics
        for c in COMPONENTS
        if c.metrics is not None and (enabled is None or c.name in enabled)
    ]


def backup_paths(enabled: set[str] | None = None) -> list[str]:
    return sorted(
        {
            path
            for c in COMPONENTS
            for path in c.backup_paths
            if enabled is None or c.name in enabled
        }
    )


def secret_readers(secret: str) -> list[Component]:
    return [c for c in COMPONENTS if secret in c.secrets]
