"""Settings of the observability concern (Prometheus, Alertmanager, Grafana, health check).

Resource-dependent values (retention, scrape interval, MemoryMax) are not settings: they come
from the resource profile of `rave_mode` (rave/modes.py).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from rave.settings.base import Concern

RECEIVER_NAME = r"^[A-Za-z0-9_-]+$"


class AlertRoute(BaseModel):
    """One Alertmanager child route: alerts matching all `matchers` go to `receiver`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    receiver: str = Field(pattern=RECEIVER_NAME, description="a receiver name")
    matchers: list[str] = Field(
        min_length=1,
        description='Alertmanager matchers, e.g. ["severity=\\"critical\\""]',
    )
    continue_matching: bool = Field(False, description="keep matching later routes")


class ObservabilitySettings(Concern):
    # Prometheus
    prometheus_evaluation_interval: str | None = Field(
        None,
        pattern=r"^[0-9]+[smh]$",
        description="rule evaluation interval; none: the mode's scrape interval",
    )
    prometheus_external_labels: dict[str, str] = Field(
        default_factory=dict, description="labels added to every alert (e.g. env=production)"
    )

    # Alertmanager: routes and receiver *names* here, receiver definitions (with their
    # webhook URLs, keys and passwords) in the alertmanager_receivers secret.
    alertmanager_silenced: bool = Field(
        False, description="route every alert to the 'null' receiver (drops them): staging"
    )
    alertmanager_default_receiver: str = Field(
        "default",
        pattern=RECEIVER_NAME,
        description="receiver (a name in the alertmanager_receivers secret) of every alert "
        "no route matches",
    )
    alertmanager_routes: list[AlertRoute] = Field(
        default_factory=list, description="child routes, first match wins"
    )
    alertmanager_watchdog_receiver: str = Field(
        "null",
        pattern=RECEIVER_NAME,
        description="receiver of the always-firing Watchdog alert (a dead man's switch)",
    )
    alertmanager_smtp_from: str | None = Field(
        None, description="sender of alert e-mails; none: alertmanager@<hostname>"
    )
    alertmanager_smtp_smarthost: str | None = Field(
        None,
        pattern=r"^[^\s:]+:[0-9]+$",
        description="default SMTP relay host:port (a receiver's smtp_smarthost overrides it)",
    )
    alertmanager_group_wait: str = Field("30s", pattern=r"^[0-9]+[smh]$")
    alertmanager_group_interval: str = Field("5m", pattern=r"^[0-9]+[smh]$")
    alertmanager_repeat_interval: str = Field("4h", pattern=r"^[0-9]+[smh]$")

    # Grafana
    grafana_install: bool = Field(
        True,
        description="install the grafana package; false deploys only its configuration "
        "(for hosts that cannot reach grafana_apt_source, e.g. staging)",
    )
    grafana_apt_source: str = Field(
        "https://apt.grafana.com stable main",
        pattern=r"^https://\S+ \S+( \S+)+$",
        description="'<uri> <suite> <component...>' of Grafana's signed APT repository",
    )
    grafana_apt_key_url: str = Field(
        "https://apt.grafana.com/gpg.key",
        pattern=r"^https://\S+$",
        description="where the repository's signing key is fetched from",
    )
    grafana_apt_key_fingerprint: str = Field(
        "B53AE77BADB630A683046005963FA27710458545",
        pattern=r"^[0-9A-F]{40}$",
        description="pinned fingerprint: a fetched key with another fingerprint is refused",
    )
    grafana_root_url: str | None = Field(
        None,
        pattern=r"^https?://\S+/grafana/$",
        description="public URL of Grafana; none: https://<hostname>:<TLS port>/grafana/",
    )

    # Health check
    healthcheck_interval: str = Field(
        "5min", pattern=r"^[0-9]+(s|min|h)$", description="systemd OnUnitActiveSec of the timer"
    )
    update_metrics_interval: str = Field(
        "15min",
        pattern=r"^[0-9]+(s|min|h)$",
        description="how often rave-update-metrics refreshes rave_reboot_required and "
        "rave_restart_pending",
    )
    healthcheck_disk_paths: list[str] = Field(
        default_factory=lambda: ["/", "/var"],
        description="file systems whose free space is checked",
    )
    healthcheck_disk_min_free_percent: int = Field(10, ge=1, le=90)
    healthcheck_certificate_min_days: int = Field(
        14, ge=1, description="a certificate expiring sooner fails the check"
    )
    healthcheck_backup_max_age_hours: int | None = Field(
        None,
        ge=1,
        description="the last successful backup may be this old; none: two periods of "
        "backup_schedule plus an hour (hourly: 3 h, daily: 49 h; other expressions: 49 h)",
    )
    healthcheck_declared_ports: list[int] = Field(
        default_factory=list,
        description="TCP ports that may listen besides the components' own and "
        "firewall_extra_tcp_ports (any other fires UndeclaredPortListening)",
    )
    healthcheck_ssh_failure_window_seconds: int = Field(
        600,
        ge=60,
        le=86400,
        description="the health check counts sshd authentication failures over this window "
        "(the SSHAuthFailureBurst alert)",
    )
    healthcheck_extra_units: list[str] = Field(
        default_factory=lambda: ["rave-secrets.service"],
        description="units checked besides the components' services (must be active)",
    )
