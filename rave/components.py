"""Every component of the RAVE host, declared once.

Firewall rules, nginx routes, Prometheus scrape targets, backup paths, secret ownership,
health checks and the testinfra parametrisation are all derived from COMPONENTS.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

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
    # a web UI operators open through an SSH tunnel (`ssh -L`): sshd's PermitOpen is exactly
    # these ports on 127.0.0.1, for the operator group only (templates/hardening/sshd_config.j2)
    operator_ui: bool = False

    @model_validator(mode="after")
    def _ui_not_public(self) -> Port:
        if self.operator_ui and self.exposure is Exposure.PUBLIC:
            raise ValueError(f"port {self.number}: a public port needs no SSH tunnel")
        return self


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


class Account(BaseModel):
    """A system account (and group of the same name) the deploy creates for one component alone:
    its unit runs as it (a drop-in's User=/Group= over the package's shared user), its secrets
    are readable by its group only."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    # a directory below /var/lib systemd keeps owned by the account (StateDirectory=, chowned
    # recursively when it is not: a host upgraded from a shared account); dpkg-statoverride
    # keeps the package's postinst from giving it back to the shared account
    state_directory: str | None = None

    @model_validator(mode="after")
    def _state_below_var_lib(self) -> Account:
        state = self.state_directory
        if state is not None and not re.fullmatch(r"/var/lib/[a-z0-9][a-z0-9_/-]*[a-z0-9]", state):
            raise ValueError(f"state_directory {state!r}: not a plain path below /var/lib")
        return self

    @property
    def home(self) -> str:
        return self.state_directory or "/nonexistent"


class Component(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    unit: str  # systemd unit name, without .service
    packages: tuple[str, ...] = ()
    # the account it runs as and that reads its secrets; derived from `account` when that is set
    user: str | None = None
    account: Account | None = None  # an account of its own, created by the deploy
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
    # the npm project directory it is installed into (package-lock.json there): its task installs
    # into it and rave-vulnscan audits it (`npm audit`), both from this one declaration
    npm_tree: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _user_from_account(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("account") is not None:
            account = data["account"]
            name = account.name if isinstance(account, Account) else account["name"]
            if data.get("user") not in (None, name):
                raise ValueError(f"user {data['user']!r} is not its account {name!r}")
            data = {**data, "user": name}
        return data

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
        # pgBackRest is PostgreSQL's archive_command: installed with it, never on a host without
        # a database (its postgresql-common would bring a postgresql.service to a monitoring host)
        packages=("postgresql-15", "pgbackrest"),
        user="postgres",
        ports=(Port(number=5432, exposure=Exposure.LOOPBACK, purpose="PostgreSQL"),),
        # pgBackRest's cipher pass and s3 keys: archive-push runs as postgres (archive_command)
        secrets=(
            "postgres_webhook_password",
            "postgres_exporter_password",
            "backup_pgbackrest_cipher_password",
            "backup_pgbackrest_s3_key",
            "backup_pgbackrest_s3_key_secret",
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
        ports=(
            Port(number=9090, exposure=Exposure.LOOPBACK, purpose="Prometheus", operator_ui=True),
        ),
        metrics=Metrics(port=9090, job="prometheus"),
        backup_paths=("/etc/prometheus",),
    ),
    Component(
        name="alertmanager",
        unit="prometheus-alertmanager",
        packages=("prometheus-alertmanager",),
        account=Account(
            name="rave-alertmanager", state_directory="/var/lib/prometheus/alertmanager"
        ),
        ports=(
            Port(number=9093, exposure=Exposure.LOOPBACK, purpose="Alertmanager", operator_ui=True),
        ),
        metrics=Metrics(port=9093, job="alertmanager"),
        secrets=("alertmanager_receivers",),
    ),
    Component(
        name="node_exporter",
        unit="prometheus-node-exporter",
        packages=("prometheus-node-exporter",),
        account=Account(name="rave-node-exporter"),
        ports=(Port(number=9100, exposure=Exposure.MONITORING, purpose="node exporter"),),
        metrics=Metrics(port=9100, job="node"),
    ),
    Component(
        name="postgres_exporter",
        unit="prometheus-postgres-exporter",
        packages=("prometheus-postgres-exporter",),
        account=Account(name="rave-postgres-exporter"),
        ports=(Port(number=9187, exposure=Exposure.MONITORING, purpose="postgres exporter"),),
        metrics=Metrics(port=9187, job="postgres"),
        secrets=("postgres_exporter_password",),
    ),
    Component(
        name="nginx_exporter",
        unit="prometheus-nginx-exporter",
        packages=("prometheus-nginx-exporter",),
        account=Account(name="rave-nginx-exporter"),
        ports=(Port(number=9113, exposure=Exposure.MONITORING, purpose="nginx exporter"),),
        metrics=Metrics(port=9113, job="nginx"),
    ),
    Component(
        name="grafana",
        unit="grafana-server",
        packages=("grafana",),
        user="grafana",
        ports=(Port(number=3030, exposure=Exposure.LOOPBACK, purpose="Grafana", operator_ui=True),),
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
        npm_tree="/opt/rave/ccr",
    ),
    Component(
        name="backup",
        unit="rave-backup",
        packages=("restic", "python3-psycopg"),
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


def operator_ui_ports() -> list[int]:
    """Every declared internal UI port (a host forwards only those of the components it runs:
    rave.hardening.tunnel_ports)."""
    return sorted({p.number for c in COMPONENTS for p in c.ports if p.operator_ui})


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


def own_accounts() -> list[tuple[Component, Account]]:
    """The components that run as an account of their own, created by the deploy."""
    return [(c, c.account) for c in COMPONENTS if c.account is not None]


def secret_readers(secret: str) -> list[Component]:
    return [c for c in COMPONENTS if secret in c.secrets]
