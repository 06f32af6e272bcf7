"""Prometheus, exporters, Alertmanager, Grafana (configuration; the package when reachable) and
the health check. Every listener on 127.0.0.1; scrape targets derived from rave.components.

Order: /etc/default files and sandbox drop-ins first (so a freshly installed package starts
on loopback, confined, right away), then the packages, then configuration that is checked with
promtool/amtool before it is installed, then restarts and reloads only of what changed.
"""

from __future__ import annotations

import shlex
from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, server, systemd
from pyinfra.operations.util import any_changed

from rave import observability as obs
from rave.deploykit import (
    ensure_directory,
    ensure_group,
    ensure_packages,
    ensure_service,
    ensure_user,
    install_host_script,
    put_file,
    put_template,
    put_text,
    remove_file_not_owned_by,
    settings,
)
from rave.facts import StatOverrides
from rave.render import FILES
from rave.runstate import is_kind
from rave.sandbox import Sandbox, dropin_text
from rave.secrets.deploy import NOLOGIN, secret_path, secrets_changed
from rave.settings import HostSettings

DROPIN = "rave.conf"
DEPS_DROPIN = "rave-deps.conf"
ALERTMANAGER_MERGE = "/usr/local/lib/rave/rave-alertmanager-config"
HEALTHCHECK_UNIT = "rave-healthcheck"
UPDATE_METRICS_UNIT = "rave-update-metrics"
GRAFANA_KEYRING = "/usr/share/keyrings/grafana.gpg"
GRAFANA_SOURCES = "/etc/apt/sources.list.d/grafana.list"

# Go binaries raise their file limit at start (setrlimit is in ~@resources): refuse, not kill.
_EPERM = (("SystemCallErrorNumber", "EPERM"),)

SANDBOXES: dict[str, Sandbox] = {
    "prometheus": Sandbox(read_write_paths=("/var/lib/prometheus",), extra=_EPERM),
    "alertmanager": Sandbox(read_write_paths=("/var/lib/prometheus/alertmanager",), extra=_EPERM),
    # the filesystem collector reads /proc/1/mounts, netdev uses netlink, systemd uses D-Bus
    "node_exporter": Sandbox(
        protect_proc="default",
        protect_home="read-only",
        address_families=("AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"),
        extra=_EPERM,
    ),
    "postgres_exporter": Sandbox(extra=_EPERM),
    "nginx_exporter": Sandbox(extra=_EPERM),
    "grafana": Sandbox(read_write_paths=("/var/lib/grafana", "/var/log/grafana"), extra=_EPERM),
}

# its own account, no capabilities: the certificate comes as a credential, the journal through
# its group; only fail2ban's status (a root-only socket) is asked by an ExecStartPre=! step,
# root without capabilities under the same sandbox (templates/healthcheck)
HEALTHCHECK_SANDBOX = Sandbox(
    read_write_paths=(obs.TEXTFILE_DIR,),
    protect_proc="default",
    extra=(("MemoryMax", "96M"), ("CPUQuota", "50%")),
)

NEEDS_SECRETS = {"postgres_exporter", "grafana"}  # alertmanager: its own drop-in template


def _unit(name: str) -> str:
    return obs.unit_name(obs.component(name))


def dropin_path(name: str, file: str = DROPIN) -> str:
    return f"/etc/systemd/system/{_unit(name)}.d/{file}"


def sandbox_dropin(name: str, config: HostSettings) -> str:
    """Sandbox, limits and, for a component with an account of its own, User=/Group= (and its
    state directory) over the package's shared `prometheus` user."""
    account = obs.component(name).account
    reason = f"sandbox and limits of {name}" + (f", runs as {account.name}" if account else "")
    return dropin_text(SANDBOXES[name], config.profile.limits_for(name), reason, account)


def healthcheck_unit_context(config: HostSettings) -> dict[str, Any]:
    return {
        "command": obs.HEALTHCHECK_COMMAND,
        "config_path": obs.HEALTHCHECK_CONFIG,
        "account": obs.HEALTHCHECK_USER,
        "groups": " ".join(obs.HEALTHCHECK_GROUPS),
        "credentials": [f"{c['name']}:{c['path']}" for c in obs.healthcheck_certificates(config)],
    }


def deps_dropin(name: str) -> str:
    extra = "After=postgresql.service\n" if name == "postgres_exporter" else ""
    return (
        "# Managed by RAVE deploy: reads its secret from the rave-secrets tmpfs at start\n"
        "[Unit]\nAfter=rave-secrets.service\nRequires=rave-secrets.service\n" + extra
    )


def alertmanager_dropin_context() -> dict[str, Any]:
    return {
        "merge_command": ALERTMANAGER_MERGE,
        "base_config": obs.ALERTMANAGER_BASE_CONFIG,
        "secret": secret_path("alertmanager", "alertmanager_receivers"),
        "runtime_config": obs.ALERTMANAGER_RUNTIME_CONFIG,
    }


def grafana_ini_context(config: HostSettings) -> dict[str, Any]:
    return {
        "http_port": obs.port_of("grafana"),
        "root_url": obs.grafana_root_url(config),
        "admin_password_file": secret_path("grafana", "grafana_admin_password"),
    }


def templates(config: HostSettings) -> dict[str, dict[str, object]]:
    """Every template this task renders, for the unit tests (name → context)."""
    return {
        "healthcheck/rave-healthcheck.service.j2": healthcheck_unit_context(config),
        "healthcheck/rave-healthcheck.timer.j2": {"interval": config.healthcheck_interval},
        "healthcheck/rave-update-metrics.service.j2": {
            "command": obs.UPDATE_METRICS_COMMAND,
            "textfile_dir": obs.TEXTFILE_DIR,
        },
        "healthcheck/rave-update-metrics.timer.j2": {"interval": config.update_metrics_interval},
        "alertmanager/rave-config.conf.j2": alertmanager_dropin_context(),
        "grafana/grafana.ini.j2": grafana_ini_context(config),
        "grafana/grafana.list.j2": {
            "keyring": GRAFANA_KEYRING,
            "source": config.grafana_apt_source,
        },
    }


def grafana_key_script(config: HostSettings, keyring: str = GRAFANA_KEYRING) -> str:
    """Fetch Grafana's signing key, refuse it unless its only primary key is the pinned one."""
    proxy = f"--proxy {shlex.quote(config.egress_proxy)} " if config.egress_proxy else ""
    pinned = config.grafana_apt_key_fingerprint
    return (
        'set -eu; tmp=$(mktemp -d); trap \'rm -rf "$tmp"\' EXIT; export GNUPGHOME="$tmp"; '
        f'curl -fsSL {proxy}{shlex.quote(config.grafana_apt_key_url)} -o "$tmp/key.asc"; '
        'fprs=$(gpg --batch --with-colons --show-keys "$tmp/key.asc" '
        '| awk -F: \'$1=="pub"{p=1;next} p&&$1=="fpr"{print $10;p=0}\'); '
        f'if [ "$fprs" != "{pinned}" ]; then '
        f'echo "Grafana key fingerprint $fprs is not the pinned {pinned}" >&2; exit 1; fi; '
        f'gpg --batch --dearmor < "$tmp/key.asc" > "$tmp/grafana.gpg"; '
        f'install -m 644 "$tmp/grafana.gpg" {shlex.quote(keyring)}'
    )


def prometheus_install_script() -> str:
    """Check the candidate tree with promtool; install it only if it passes.

    A failed check removes the candidate, so the next deploy uploads (and checks) it again.
    """
    c = obs.PROMETHEUS_CANDIDATE_DIR
    live = obs.PROMETHEUS_DIR
    return (
        "set -eu; "
        f"if promtool check config {c}/prometheus.yml && promtool check rules {c}/rules/*.yml; "
        f"then install -d -m 755 {live}/rules; "
        f"for f in {live}/rules/*.yml; do "
        f'[ -e "$f" ] || continue; [ -e "{c}/rules/$(basename "$f")" ] || rm -f "$f"; done; '
        f"install -m 644 {c}/rules/*.yml {live}/rules/; "
        f"install -m 644 {c}/prometheus.yml {live}/prometheus.yml; "
        f"else rm -rf {c}; exit 1; fi"
    )


def default_files(config: HostSettings) -> dict[str, tuple[str, str, str]]:
    """component → (operation name, /etc/default file, its text)."""
    return {
        "prometheus": (
            "Prometheus arguments (loopback, retention of the mode)",
            "/etc/default/prometheus",
            obs.env_file({"ARGS": obs.prometheus_args(config)}),
        ),
        "node_exporter": (
            "Node exporter arguments (loopback, textfile and systemd collectors)",
            "/etc/default/prometheus-node-exporter",
            obs.env_file({"ARGS": obs.node_exporter_args(config)}),
        ),
        "nginx_exporter": (
            "nginx exporter arguments (loopback, stub_status)",
            "/etc/default/prometheus-nginx-exporter",
            obs.env_file({"ARGS": obs.nginx_exporter_args(config)}),
        ),
        "postgres_exporter": (
            "postgres exporter environment (password read from the secret file)",
            "/etc/default/prometheus-postgres-exporter",
            obs.env_file(obs.postgres_exporter_environment(config)),
        ),
        "alertmanager": (
            "Alertmanager arguments (loopback, no cluster port)",
            "/etc/default/prometheus-alertmanager",
            obs.env_file({"ARGS": obs.alertmanager_args(config)}),
        ),
    }


def textfile_directory(name: str) -> Any:
    """The textfile collector directory, as every task that writes metrics wants it (its group
    is created by this task, which deploy.py runs before the backup and the scan)."""
    return ensure_directory(
        name=name,
        path=obs.TEXTFILE_DIR,
        user="root",
        group=obs.TEXTFILE_GROUP,
        mode=obs.TEXTFILE_MODE,
    )


@deploy("Observability")
def observability() -> None:
    config = settings()
    changed: dict[str, list] = {name: [] for name in (*obs.OBSERVABILITY_COMPONENTS, "grafana")}
    here = obs.host_components(config)  # a monitoring host (rave/topology.py) runs fewer

    # --- before the packages: loopback-only arguments and the sandbox ---------------------
    defaults = {n: f for n, f in default_files(config).items() if n in here}
    for name, (description, path, text) in defaults.items():
        changed[name].append(put_text(description, path, text))
    dropins = []
    for name in (n for n in SANDBOXES if n in here or n == "grafana"):
        op = put_text(
            f"Sandbox and {config.rave_mode} limits of {name}",
            dropin_path(name),
            sandbox_dropin(name, config),
        )
        changed[name].append(op)
        dropins.append(op)
    for name in (n for n in NEEDS_SECRETS if n in here or n == "grafana"):
        op = put_text(
            f"{name} starts after rave-secrets", dropin_path(name, DEPS_DROPIN), deps_dropin(name)
        )
        changed[name].append(op)
        dropins.append(op)
    op = install_host_script(
        "Alertmanager config builder",
        str(FILES / "alertmanager" / "rave-alertmanager-config"),
        ALERTMANAGER_MERGE,
    )
    changed["alertmanager"].append(op)
    op = put_template(
        "Alertmanager builds its config from the receivers secret",
        "alertmanager/rave-config.conf.j2",
        dropin_path("alertmanager", DEPS_DROPIN),
        **alertmanager_dropin_context(),
    )
    changed["alertmanager"].append(op)
    dropins.append(op)
    op = put_text(
        "Alertmanager routes (receivers come from the secret)",
        obs.ALERTMANAGER_BASE_CONFIG,
        obs.alertmanager_base_config(config),
    )
    changed["alertmanager"].append(op)

    systemd.daemon_reload(name="Reload systemd (drop-ins changed)", _if=any_changed(*dropins))

    # before the packages: their postinst must leave these directories as wanted
    overrides = host.get_fact(StatOverrides)
    for path, wanted in obs.stat_overrides().items():
        if overrides.get(path) != wanted:
            server.shell(
                name=f"dpkg keeps {path} {':'.join(wanted[:2])} {wanted[2]}",
                commands=[obs.stat_override_command(path, wanted)],
            )

    # --- packages -----------------------------------------------------------------------
    ensure_packages(
        "Install Prometheus, Alertmanager and the exporters (Debian's)",
        [*(p for n in here for p in obs.component(n).packages), "dbus"],
    )

    # a postinst may chown them whatever dpkg's override says: root's again (nothing if so)
    for path in obs.ROOT_OWNED_PACKAGE_DIRS:
        ensure_directory(name=f"{path} is root's", path=path, user="root", group="root", mode="755")

    # some maintainer scripts rewrite their /etc/default file on first install: put ours back
    for name, (description, path, text) in defaults.items():
        changed[name].append(put_text(f"{description}, after the install", path, text))

    # --- Prometheus: candidate tree, promtool, install, reload ------------------------------
    candidate = [
        put_text(
            "Prometheus configuration (candidate)",
            f"{obs.PROMETHEUS_CANDIDATE_DIR}/prometheus.yml",
            obs.prometheus_config(config),
        )
    ]
    for rules in sorted((FILES / "prometheus" / "rules").glob("*.yml")):
        candidate.append(
            put_file(
                f"Alert rules {rules.name} (candidate)",
                str(rules),
                f"{obs.PROMETHEUS_CANDIDATE_DIR}/rules/{rules.name}",
                mode="644",
            )
        )
    installed = server.shell(
        name="promtool check config and rules, then install them",
        commands=[prometheus_install_script()],
        _if=any_changed(*candidate),
    )

    # --- Grafana: the package when its repository is reachable, configuration always ------
    if config.grafana_install:
        ensure_packages("Tools to verify Grafana's signing key", ["gpg", "curl"])
        if not is_kind(GRAFANA_KEYRING, "file"):
            server.shell(
                name="Grafana's signing key (pinned fingerprint)",
                commands=[grafana_key_script(config)],
            )
        source = put_template(
            "Grafana's APT repository",
            "grafana/grafana.list.j2",
            GRAFANA_SOURCES,
            keyring=GRAFANA_KEYRING,
            source=config.grafana_apt_source,
        )
        apt.update(name="Read Grafana's repository", _if=source.did_change)
        ensure_packages("Install Grafana", obs.component("grafana").packages)
    if is_kind(obs.GRAFANA_HOME, "directory"):
        ensure_directory(
            name=f"{obs.GRAFANA_HOME} is root's (the package's tree, the account's home)",
            path=obs.GRAFANA_HOME,
            user="root",
            group="root",
            mode="755",
        )
    changed["grafana"].append(
        put_template(
            "Grafana settings (loopback, sub-path, no anonymous access)",
            "grafana/grafana.ini.j2",
            "/etc/grafana/grafana.ini",
            **grafana_ini_context(config),
        )
    )
    changed["grafana"].append(
        put_text(
            "Grafana datasource (the local Prometheus)",
            "/etc/grafana/provisioning/datasources/rave.yaml",
            obs.grafana_datasources(),
        )
    )
    changed["grafana"].append(
        put_text(
            "Grafana dashboard provider",
            "/etc/grafana/provisioning/dashboards/rave.yaml",
            obs.grafana_dashboard_provider(),
        )
    )
    for dashboard in sorted((FILES / "grafana" / "dashboards").glob("*.json")):
        changed["grafana"].append(
            put_file(
                f"Grafana dashboard {dashboard.stem}",
                str(dashboard),
                f"{obs.GRAFANA_DASHBOARD_DIR}/{dashboard.name}",
                mode="644",
            )
        )

    # --- health check ---------------------------------------------------------------------
    ensure_group(name=f"Create group {obs.TEXTFILE_GROUP}", group=obs.TEXTFILE_GROUP, system=True)
    textfile_directory("Textfile collector directory (root's; the metric writers' group)")
    ensure_group(
        name=f"Create group {obs.HEALTHCHECK_USER}", group=obs.HEALTHCHECK_USER, system=True
    )
    ensure_user(
        name=f"Create the health check's account {obs.HEALTHCHECK_USER}",
        user=obs.HEALTHCHECK_USER,
        group=obs.HEALTHCHECK_USER,
        home="/nonexistent",
        shell=NOLOGIN,
        system=True,
        create_home=False,
        ensure_home=False,
    )
    put_text(
        f"Debug mode metric ({obs.DEBUG_MODE_METRIC})",
        obs.DEBUG_MODE_TEXTFILE,
        obs.debug_mode_textfile(config),
    )
    healthcheck = [
        install_host_script(
            "Health check command",
            str(FILES / "healthcheck" / "rave-healthcheck"),
            obs.HEALTHCHECK_COMMAND,
        ),
        put_text(
            "Health check configuration", obs.HEALTHCHECK_CONFIG, obs.healthcheck_config(config)
        ),
        put_template(
            "Health check service (its own account)",
            "healthcheck/rave-healthcheck.service.j2",
            f"/etc/systemd/system/{HEALTHCHECK_UNIT}.service",
            **healthcheck_unit_context(config),
        ),
        put_text(
            "Health check sandbox",
            f"/etc/systemd/system/{HEALTHCHECK_UNIT}.service.d/{DROPIN}",
            dropin_text(HEALTHCHECK_SANDBOX, None, "sandbox of the health check"),
        ),
    ]
    timer = put_template(
        "Health check timer",
        "healthcheck/rave-healthcheck.timer.j2",
        f"/etc/systemd/system/{HEALTHCHECK_UNIT}.timer",
        interval=config.healthcheck_interval,
    )

    # --- update metrics: reboot required, services still running replaced libraries -------
    update_metrics = [
        install_host_script(
            "Update metrics command",
            str(FILES / "updates" / "rave-update-metrics"),
            obs.UPDATE_METRICS_COMMAND,
        ),
        put_template(
            "Update metrics service",
            "healthcheck/rave-update-metrics.service.j2",
            f"/etc/systemd/system/{UPDATE_METRICS_UNIT}.service",
            command=obs.UPDATE_METRICS_COMMAND,
            textfile_dir=obs.TEXTFILE_DIR,
        ),
    ]
    update_timer = put_template(
        "Update metrics timer",
        "healthcheck/rave-update-metrics.timer.j2",
        f"/etc/systemd/system/{UPDATE_METRICS_UNIT}.timer",
        interval=config.update_metrics_interval,
    )

    # --- activate: restart what changed, reload Prometheus on new config -------------------
    systemd.daemon_reload(
        name="Reload systemd (health check or update metrics units changed)",
        _if=any_changed(*healthcheck, timer, *update_metrics, update_timer),
    )
    for name in here:
        unit = obs.component(name).unit
        ensure_service(name=f"Enable {unit}", service=unit, running=True, enabled=True)
        ops = changed[name]
        secret = secrets_changed(name) if obs.component(name).secrets else (lambda: False)
        ensure_service(
            name=f"Restart {unit} (its settings or secrets changed)",
            service=unit,
            restarted=True,
            _if=lambda ops=ops, secret=secret: secret() or any(o.did_change() for o in ops),
        )
    ensure_service(
        name="Reload Prometheus (configuration or rules changed)",
        service="prometheus",
        reloaded=True,
        _if=lambda: (
            installed.did_change() and not any(o.did_change() for o in changed["prometheus"])
        ),
    )
    if config.grafana_install:
        grafana_secret = secrets_changed("grafana")
        unit = obs.component("grafana").unit
        ensure_service(name=f"Enable {unit}", service=unit, running=True, enabled=True)
        ensure_service(
            name=f"Restart {unit} (its settings or secrets changed)",
            service=unit,
            restarted=True,
            _if=lambda: grafana_secret() or any(o.did_change() for o in changed["grafana"]),
        )

    ensure_service(
        name="Health check timer",
        service=f"{HEALTHCHECK_UNIT}.timer",
        running=True,
        enabled=True,
    )
    ensure_service(
        name="Update metrics timer",
        service=f"{UPDATE_METRICS_UNIT}.timer",
        running=True,
        enabled=True,
    )
    server.shell(
        name="Refresh the update metrics once (the collector changed)",
        commands=[f"systemctl start {UPDATE_METRICS_UNIT}.service"],
        _if=any_changed(*update_metrics),
    )
    # a host upgraded from the root health check: the account could not replace a file of
    # another owner in the sticky directory
    stale_metrics = remove_file_not_owned_by(
        name="The health check's metrics are its account's (else removed)",
        path=f"{obs.TEXTFILE_DIR}/rave_healthcheck.prom",
        owner=obs.HEALTHCHECK_USER,
    )
    # run once now, so its metrics exist right after a deploy (not only after the first tick)
    server.shell(
        name="Run the health check once (it changed)",
        commands=[f"systemctl start {HEALTHCHECK_UNIT}.service"],
        _if=any_changed(*healthcheck, stale_metrics),
    )
