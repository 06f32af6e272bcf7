"""What the observability task writes, computed from the settings and rave.components.

Pure functions (no pyinfra) so that unit tests can check every generated file.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

import yaml

from rave.components import (
    COMPONENTS,
    Component,
    Exposure,
    component,
    monitoring_ports,
    own_accounts,
    scrape_targets,
)
from rave.ops.validate import SPOOL_STALLED_MAX_SECONDS, webhook_health_url
from rave.secrets.deploy import secret_path
from rave.settings import HostSettings
from rave.topology import MONITORING_HOST_COMPONENTS

# The node exporter's textfile collector directory (Debian's default, set explicitly).
# Writers (health check, backup) replace <name>.prom atomically (write a dot-file, rename).
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
# root's, writable by the group of the writers that run as their own accounts (health check,
# vulnerability scan); sticky, so none of them can rename or delete another writer's files
# (root's temporary files included) while root writes there
TEXTFILE_GROUP = "rave-metrics"
TEXTFILE_MODE = "1775"
# Debian's exporter packages chown /var/lib/prometheus to the shared `prometheus` user on every
# configure unless dpkg-statoverride lists it: kept root's, so no service account can swap the
# textfile directory inside it that root writes into. /var/log/prometheus: logrotate (root)
# acts there; the postgres exporter's postinst chowns it whatever the override says, so the
# deploy also puts it back after the packages. Nothing logs there (the journal does).
ROOT_OWNED_PACKAGE_DIRS = ("/var/lib/prometheus", "/var/log/prometheus")
# the grafana account's home is Grafana's package tree (an older deploy made it the account's)
GRAFANA_HOME = "/usr/share/grafana"
HEALTHCHECK_USER = "rave-healthcheck"
# sshd's failures are read from the journal (the group of journal readers)
HEALTHCHECK_GROUPS = ("systemd-journal", TEXTFILE_GROUP)
# the login role tasks/database.py creates for the exporter (pg_monitor, database postgres)
POSTGRES_EXPORTER_ROLE = "rave_exporter"
BACKUP_METRIC = "rave_backup_last_success_timestamp_seconds"
# written by the deploy on every host: 1 while debug_mode is on (the DebugModeOn alert), else 0
DEBUG_MODE_METRIC = "rave_debug_mode"
DEBUG_MODE_TEXTFILE = f"{TEXTFILE_DIR}/{DEBUG_MODE_METRIC}.prom"
# the exporters' log level in debug mode (the Go exporters' promlog flag)
EXPORTER_DEBUG_ARG = "--log.level=debug"

FS_TYPES_EXCLUDE = (
    "^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|"
    "iso9660|mqueue|nsfs|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|sysfs|"
    "tracefs)$"
)
PROMETHEUS_DIR = "/etc/prometheus"
PROMETHEUS_CANDIDATE_DIR = "/etc/prometheus/rave-candidate"
ALERTMANAGER_BASE_CONFIG = "/etc/prometheus/alertmanager.base.json"
ALERTMANAGER_RUNTIME_CONFIG = "/run/prometheus-alertmanager/alertmanager.yml"
HEALTHCHECK_CONFIG = "/etc/rave/healthcheck.json"
HEALTHCHECK_COMMAND = "/usr/local/sbin/rave-healthcheck"
UPDATE_METRICS_COMMAND = "/usr/local/sbin/rave-update-metrics"
GRAFANA_DASHBOARD_DIR = "/etc/grafana/dashboards/rave"
GRAFANA_DATASOURCE_UID = "prometheus"


# Components this task manages (one package each).
OBSERVABILITY_COMPONENTS = (
    "prometheus",
    "alertmanager",
    "node_exporter",
    "postgres_exporter",
    "nginx_exporter",
)


def loopback(port: int) -> str:
    return f"127.0.0.1:{port}"


def port_of(name: str) -> int:
    return component(name).ports[0].number


def listen_address(settings: HostSettings, name: str) -> str:
    """127.0.0.1:<port>; a MONITORING port listens on every address only when the firewall
    admits named monitoring sources (firewall_monitoring_sources, or the monitoring hosts of
    the inventory: rave/topology.py), which it then restricts to."""
    port = component(name).ports[0]
    sources = settings.firewall_monitoring_sources or settings.monitoring_addresses
    if port.exposure is Exposure.MONITORING and sources:
        return f"0.0.0.0:{port.number}"
    return loopback(port.number)


def enabled_components(settings: HostSettings) -> list[Component]:
    """Components deployed on this host: every required one, plus Grafana and CCR when installed;
    on a monitoring host (rave/topology.py) only the monitoring ones."""
    return [
        c
        for c in COMPONENTS
        if (
            not c.optional
            or (c.name == "grafana" and settings.grafana_install)
            or (c.name == "ccr" and settings.ccr_install)
        )
        and (not settings.monitoring_role or c.name in MONITORING_HOST_COMPONENTS)
    ]


def host_components(settings: HostSettings) -> tuple[str, ...]:
    """The OBSERVABILITY_COMPONENTS this host runs (fewer on a monitoring host)."""
    names = enabled_names(settings)
    return tuple(name for name in OBSERVABILITY_COMPONENTS if name in names)


def enabled_names(settings: HostSettings) -> set[str]:
    return {c.name for c in enabled_components(settings)}


def evaluation_interval(settings: HostSettings) -> str:
    return settings.prometheus_evaluation_interval or settings.profile.scrape_interval


# --- Prometheus --------------------------------------------------------------------------


def prometheus_args(settings: HostSettings) -> str:
    profile = settings.profile
    return " ".join(
        [
            f"--config.file={PROMETHEUS_DIR}/prometheus.yml",
            f"--web.listen-address={loopback(port_of('prometheus'))}",
            "--storage.tsdb.path=/var/lib/prometheus/metrics2/",
            f"--storage.tsdb.retention.time={profile.prometheus_retention_time}",
            f"--storage.tsdb.retention.size={profile.prometheus_retention_size}",
        ]
    )


def prometheus_config(settings: HostSettings) -> str:
    """prometheus.yml; rule_files is relative, so the candidate tree validates as it will run."""
    jobs: list[dict[str, Any]] = []
    for target in scrape_targets(enabled_names(settings)):
        jobs.append(
            {
                "job_name": target.job,
                "metrics_path": target.path,
                "static_configs": [
                    {
                        "targets": [loopback(target.port)],
                        "labels": {"instance": settings.hostname},
                    }
                ],
            }
        )
    # a monitoring host also scrapes every service host's MONITORING-exposed exporters
    for name, address in sorted(settings.monitoring_scrape_hosts.items()):
        host = f"[{address}]" if ":" in address else address
        for target in scrape_targets():
            if target.port not in monitoring_ports():
                continue
            job = next((j for j in jobs if j["job_name"] == target.job), None)
            if job is None:
                job = {"job_name": target.job, "metrics_path": target.path, "static_configs": []}
                jobs.append(job)
            job["static_configs"].append(
                {"targets": [f"{host}:{target.port}"], "labels": {"instance": name}}
            )
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": settings.profile.scrape_interval,
            "evaluation_interval": evaluation_interval(settings),
            "external_labels": {"host": settings.hostname, **settings.prometheus_external_labels},
        },
        "alerting": {
            "alertmanagers": [
                {"static_configs": [{"targets": [loopback(port_of("alertmanager"))]}]}
            ]
        },
        "rule_files": ["rules/*.yml"],
        "scrape_configs": jobs,
    }
    return "# Managed by RAVE deploy (rave/observability.py)\n" + yaml.safe_dump(
        config, sort_keys=False, default_flow_style=False
    )


# --- Accounts ----------------------------------------------------------------------------


def stat_overrides() -> dict[str, tuple[str, str, str]]:
    """path → (user, group, octal mode) that dpkg must keep (dpkg-statoverride): each own
    account's state directory (no package postinst gives it back to the shared account) and the
    package directories that must stay root's."""
    overrides = {path: ("root", "root", "755") for path in ROOT_OWNED_PACKAGE_DIRS}
    for _, account in own_accounts():
        if account.state_directory:
            overrides[account.state_directory] = (account.name, account.name, "750")
    return overrides


def parse_stat_overrides(lines: list[str]) -> dict[str, tuple[str, str, str]]:
    """`dpkg-statoverride --list`: "user group mode path" per line."""
    result = {}
    for line in lines:
        fields = line.split(maxsplit=3)
        if len(fields) == 4:
            user, group, mode, path = fields
            result[path] = (user, group, mode.lstrip("0") or "0")
    return result


def stat_override_command(path: str, wanted: tuple[str, str, str]) -> str:
    """Replace the override of `path`. A state directory is not chowned now (--update): systemd's
    StateDirectory= chowns it recursively at the next start only while its top is not the
    account's; /var/lib/prometheus holds no one's files, it is chowned to root right away."""
    user, group, mode = wanted
    update = "--update " if path in ROOT_OWNED_PACKAGE_DIRS else ""
    quoted = shlex.quote(path)
    return (
        f"dpkg-statoverride --remove {quoted} 2>/dev/null || true; "
        f"dpkg-statoverride {update}--add {user} {group} {mode} {quoted}"
    )


# --- Exporters ---------------------------------------------------------------------------


def node_exporter_args(settings: HostSettings) -> str:
    return " ".join(
        [
            f"--web.listen-address={listen_address(settings, 'node_exporter')}",
            f"--collector.textfile.directory={TEXTFILE_DIR}",
            # unit states for the SystemdUnitFailed alert (the default exclusions of
            # device/mount/scope/slice/target units stay)
            "--collector.systemd",
            # Debian's default minus overlay: a staging host's root file system is an overlay
            f"--collector.filesystem.fs-types-exclude={FS_TYPES_EXCLUDE}",
            *debug_args(settings),
        ]
    )


def debug_args(settings: HostSettings) -> list[str]:
    return [EXPORTER_DEBUG_ARG] if settings.debug_mode else []


def debug_mode_textfile(settings: HostSettings) -> str:
    value = 1 if settings.debug_mode else 0
    return (
        f"# HELP {DEBUG_MODE_METRIC} 1 while debug mode (verbose logs, debug_mode) is on\n"
        f"# TYPE {DEBUG_MODE_METRIC} gauge\n"
        f"{DEBUG_MODE_METRIC} {value}\n"
    )


def nginx_exporter_args(settings: HostSettings) -> str:
    stub_status = next(p for p in component("nginx").ports if p.purpose == "stub_status")
    return " ".join(
        [
            f"-web.listen-address={listen_address(settings, 'nginx_exporter')}",
            f"-nginx.scrape-uri=http://{loopback(stub_status.number)}/stub_status",
            "-nginx.retries=10",
        ]
    )


def postgres_exporter_environment(settings: HostSettings) -> dict[str, str]:
    """The exporter reads its password from the secret file itself (never in argv or env)."""
    return {
        "DATA_SOURCE_NAME": "",
        "DATA_SOURCE_URI": f"{loopback(port_of('postgresql'))}/postgres?sslmode=disable",
        "DATA_SOURCE_USER": POSTGRES_EXPORTER_ROLE,
        "DATA_SOURCE_PASS_FILE": secret_path("postgres_exporter", "postgres_exporter_password"),
        "ARGS": " ".join(
            [
                f"--web.listen-address={listen_address(settings, 'postgres_exporter')}",
                *debug_args(settings),
            ]
        ),
    }


def alertmanager_args(settings: HostSettings) -> str:
    return " ".join(
        [
            f"--config.file={ALERTMANAGER_RUNTIME_CONFIG}",
            f"--web.listen-address={loopback(port_of('alertmanager'))}",
            "--cluster.listen-address=",  # no gossip port: a single Alertmanager
            "--storage.path=/var/lib/prometheus/alertmanager/",
        ]
    )


def env_file(values: dict[str, str]) -> str:
    lines = ["# Managed by RAVE deploy (rave/observability.py)"]
    lines += [f'{key}="{value}"' for key, value in values.items()]
    return "\n".join(lines) + "\n"


# --- Alertmanager ------------------------------------------------------------------------


def receiver_names(settings: HostSettings) -> list[str]:
    if settings.alertmanager_silenced:
        return ["null"]
    names = [settings.alertmanager_default_receiver, settings.alertmanager_watchdog_receiver]
    names += [route.receiver for route in settings.alertmanager_routes]
    return sorted(set(names))


def alertmanager_base_config(settings: HostSettings) -> str:
    """Routes from the settings; every receiver present but empty (a no-op).

    On the host, rave-alertmanager-config merges the receiver definitions of the
    alertmanager_receivers secret (a JSON list of Alertmanager receivers) over these by name.
    JSON is YAML, so the merged file needs no YAML library on the host.
    """
    silenced = settings.alertmanager_silenced
    routes: list[dict[str, Any]] = [
        {
            "receiver": "null" if silenced else settings.alertmanager_watchdog_receiver,
            "matchers": ['alertname="Watchdog"'],
        }
    ]
    for route in [] if silenced else settings.alertmanager_routes:
        entry: dict[str, Any] = {"receiver": route.receiver, "matchers": list(route.matchers)}
        if route.continue_matching:
            entry["continue"] = True
        routes.append(entry)
    smtp: dict[str, Any] = {
        "smtp_from": settings.alertmanager_smtp_from or f"alertmanager@{settings.hostname}",
        "smtp_require_tls": True,
    }
    if settings.alertmanager_smtp_smarthost:
        smtp["smtp_smarthost"] = settings.alertmanager_smtp_smarthost
    config = {
        "global": smtp,
        "route": {
            "receiver": "null" if silenced else settings.alertmanager_default_receiver,
            "group_by": ["alertname", "instance"],
            "group_wait": settings.alertmanager_group_wait,
            "group_interval": settings.alertmanager_group_interval,
            "repeat_interval": settings.alertmanager_repeat_interval,
            "routes": routes,
        },
        "inhibit_rules": [
            {
                "source_matchers": ['severity="critical"'],
                "target_matchers": ['severity="warning"'],
                "equal": ["alertname", "instance"],
            }
        ],
        "receivers": [{"name": name} for name in receiver_names(settings)],
    }
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


# --- Grafana -----------------------------------------------------------------------------


def grafana_root_url(settings: HostSettings) -> str:
    if settings.grafana_root_url:
        return settings.grafana_root_url
    tls = next(p for p in component("nginx").ports if p.exposure is Exposure.PUBLIC)
    return f"https://{settings.hostname}:{tls.number}/grafana/"


def grafana_datasources() -> str:
    config = {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "Prometheus",
                "uid": GRAFANA_DATASOURCE_UID,
                "type": "prometheus",
                "access": "proxy",
                "url": f"http://{loopback(port_of('prometheus'))}",
                "isDefault": True,
                "editable": False,
                "jsonData": {"timeInterval": "30s"},
            }
        ],
    }
    return "# Managed by RAVE deploy\n" + yaml.safe_dump(config, sort_keys=False)


def grafana_dashboard_provider() -> str:
    config = {
        "apiVersion": 1,
        "providers": [
            {
                "name": "rave",
                "folder": "RAVE",
                "type": "file",
                "disableDeletion": True,
                "allowUiUpdates": False,
                "options": {"path": GRAFANA_DASHBOARD_DIR},
            }
        ],
    }
    return "# Managed by RAVE deploy\n" + yaml.safe_dump(config, sort_keys=False)


# --- Health check ------------------------------------------------------------------------


def unit_name(c: Component) -> str:
    return c.watched_unit


SCHEDULE_PERIODS = {"minutely": 60, "hourly": 3600, "daily": 86400, "weekly": 7 * 86400}


def backup_max_age_seconds(settings: HostSettings) -> int:
    """How old the last successful backup may be before the check fails and BackupTooOld fires."""
    if settings.healthcheck_backup_max_age_hours is not None:
        return settings.healthcheck_backup_max_age_hours * 3600
    schedule = getattr(settings, "backup_schedule", "daily")  # the backup concern's setting
    return 2 * SCHEDULE_PERIODS.get(schedule, 86400) + 3600


def healthcheck_certificates(settings: HostSettings) -> list[dict[str, str]]:
    """The certificates the health check reads (where nginx runs). Its unit hands each one over
    as a systemd credential (LoadCredential=<name>:<path>): the check's account needs no access
    to the nginx secrets directory."""
    if "nginx" not in enabled_names(settings):
        return []
    return [{"name": "tls_certificate", "path": secret_path("nginx", "tls_certificate")}]


def healthcheck_config(settings: HostSettings) -> str:
    components = enabled_components(settings)
    units = [unit_name(c) for c in components]
    units += [u for u in settings.healthcheck_extra_units if u not in units]
    ports = [
        {"component": c.name, "port": p.number, "purpose": p.purpose}
        for c in components
        for p in c.ports
    ]
    certificates = healthcheck_certificates(settings)
    backup = {"metric": BACKUP_METRIC, "max_age_seconds": backup_max_age_seconds(settings)}
    declared: set[int] = {p.number for c in components for p in c.ports}
    declared |= set(settings.firewall_extra_tcp_ports) | set(settings.healthcheck_declared_ports)
    config = {
        "textfile_dir": TEXTFILE_DIR,
        "metrics_owner": HEALTHCHECK_USER,  # a run as root by hand gives the file to the unit
        "units": units,
        "ports": ports,
        "certificates": certificates,
        "certificate_min_days": settings.healthcheck_certificate_min_days,
        "disks": [
            {"path": path, "min_free_percent": settings.healthcheck_disk_min_free_percent}
            for path in settings.healthcheck_disk_paths
        ],
        "backup": backup,
        # security signals (metrics only): the SSHAuthFailureBurst, Fail2banBanning and
        # UndeclaredPortListening alerts
        "declared_ports": sorted(declared),
        "ssh": {"comm": "sshd", "window_seconds": settings.healthcheck_ssh_failure_window_seconds},
        "fail2ban": True,  # tasks/hardening.py installs it on every host
    }
    if any(c.name == "webhook" for c in components):
        # the receiver's queue: the spool drains, no dead letters wait (its /healthz)
        config["webhook"] = {
            "url": webhook_health_url(),
            "stalled_max_seconds": SPOOL_STALLED_MAX_SECONDS,
        }
    return json.dumps(config, indent=2) + "\n"


# --- dashboards ----------------------------------------------------------------------------


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of every panel, rows included."""
    queries = []
    panels = list(dashboard.get("panels", []))
    while panels:
        panel = panels.pop(0)
        panels += panel.get("panels", [])
        queries += [(panel["title"], t["expr"]) for t in panel.get("targets", []) if "expr" in t]
    return queries


def grafana_expr(expr: str, scrape_interval: str, range_: str = "1h") -> str:
    """Substitute Grafana's built-in variables as Grafana would for a 1-hour view."""
    seconds = int(scrape_interval.rstrip("s"))
    return (
        expr.replace("$__rate_interval", f"{4 * seconds}s")
        .replace("$__interval", f"{seconds}s")
        .replace("$__range", range_)
    )
