"""Vulnerability scanning: a daily, sandboxed scan of the Debian packages and npm trees.

The host script (files/vulnscan/vulnscan_scan.py) writes a JSON report and SARIF 2.1.0 under
/var/lib/rave/vulnscan and metrics for node exporter's textfile collector; alert rules are in
files/prometheus/rules/vulnscan.yml. See docs/vulnscan.md.
"""

from __future__ import annotations

import json
from typing import Any

from pyinfra.api import deploy
from pyinfra.operations import apt, files, server, systemd
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
from rave.modes import ServiceLimits
from rave.render import FILES
from rave.sandbox import DEFAULT_SYSCALL_FILTER, Sandbox, dropin_text
from rave.secrets.deploy import NOLOGIN
from rave.settings import HostSettings
from rave.settings.vulnscan import REPO_ROOT
from tasks.observability import textfile_directory

UNIT = "rave-vulnscan"
USER = "rave-vulnscan"
SCRIPT = "/usr/local/sbin/rave-vulnscan-scan"
CONFIG_PATH = "/etc/rave/vulnscan.json"
STATE_DIR = "/var/lib/rave/vulnscan"
TEXTFILE_DIR = obs.TEXTFILE_DIR
SERVICE_PATH = f"/etc/systemd/system/{UNIT}.service"
TIMER_PATH = f"/etc/systemd/system/{UNIT}.timer"
DROPIN_PATH = f"/etc/systemd/system/{UNIT}.service.d/sandbox.conf"
NPM_AUDIT_FILE = f"{STATE_DIR}-data/npm-audit.json"  # vulnscan_npm_audit_upload goes here
TRIVY_KEY = "/etc/apt/keyrings/rave-trivy.asc"
TRIVY_LIST = "/etc/apt/sources.list.d/rave-trivy.list"


def npm_trees(config: HostSettings) -> list[str]:
    """The npm trees to audit: the setting, or the npm_tree the host's components declare (the
    same declaration their tasks install into, so the two cannot drift apart)."""
    if config.vulnscan_npm_trees is not None:
        return list(config.vulnscan_npm_trees)
    return [c.npm_tree for c in obs.enabled_components(config) if c.npm_tree]


def scan_config(config: HostSettings) -> dict[str, Any]:
    """What the host script reads (/etc/rave/vulnscan.json): settings only, no secrets."""
    return {
        "host": config.hostname,
        "source": config.vulnscan_source,
        "release": config.vulnscan_release,
        "data_url": config.vulnscan_data_url,
        "data_file": config.vulnscan_data_file,
        "proxy": config.egress_proxy,
        "timeout_seconds": config.vulnscan_timeout_seconds,
        "state_dir": STATE_DIR,
        "textfile_dir": TEXTFILE_DIR,
        "npm_trees": npm_trees(config),
        "npm_audit_file": NPM_AUDIT_FILE if config.vulnscan_npm_audit_upload else None,
        "trivy": {"command": "trivy", "db_repository": config.vulnscan_trivy_db_repository},
    }


def sandbox(config: HostSettings) -> Sandbox:
    return Sandbox(
        read_write_paths=(STATE_DIR, TEXTFILE_DIR),
        # node (npm audit) needs W+X memory for its JIT and V8's memory protection keys
        # (@pkey: without them node dies with SIGSYS before printing anything); the Python scan
        # alone needs neither
        memory_deny_write_execute=not npm_trees(config),
        syscall_filter=(
            (f"{DEFAULT_SYSCALL_FILTER[0]} @pkey", *DEFAULT_SYSCALL_FILTER[1:])
            if npm_trees(config)
            else DEFAULT_SYSCALL_FILTER
        ),
    )


def limits(config: HostSettings) -> ServiceLimits:
    return ServiceLimits(
        memory_max_mb=config.vulnscan_memory_max_mb,
        cpu_quota_percent=config.vulnscan_cpu_quota_percent,
    )


def templates(config: HostSettings) -> dict[str, dict[str, Any]]:
    """Every template this task renders (name → context), for deploy and unit tests alike."""
    return {
        "vulnscan/rave-vulnscan.service.j2": {
            "source": config.vulnscan_source,
            "script": SCRIPT,
            "config_path": CONFIG_PATH,
            "state_dir": STATE_DIR,
            "state_directory": STATE_DIR.removeprefix("/var/lib/"),
            "account": USER,
            "groups": obs.TEXTFILE_GROUP,
            "timeout_seconds": config.vulnscan_timeout_seconds,
        },
        "vulnscan/rave-vulnscan.timer.j2": {
            "schedule": config.vulnscan_schedule,
            "randomized_delay": config.vulnscan_randomized_delay,
        },
    }


def _trivy(config: HostSettings) -> Any:
    ensure_directory(
        name="APT keyring directory",
        path="/etc/apt/keyrings",
        user="root",
        group="root",
        mode="755",
    )
    key = files.download(
        name="Aqua's APT signing key (pinned sha256)",
        src=config.vulnscan_trivy_key_url,
        dest=TRIVY_KEY,
        sha256sum=config.vulnscan_trivy_key_sha256,
        proxy=config.egress_proxy,
        user="root",
        group="root",
        mode="644",
    )
    source = put_text(
        "Aqua's APT repository (trivy)",
        TRIVY_LIST,
        f"deb [signed-by={TRIVY_KEY}] {config.vulnscan_trivy_apt_url} "
        f"{config.vulnscan_release} main\n",
    )
    apt.update(name="Refresh apt (trivy repository changed)", _if=any_changed(key, source))
    return ensure_packages("Install trivy", ["trivy"])


@deploy("Vulnerability scanning")
def vulnscan() -> None:
    config = settings()

    if not config.vulnscan_enabled:
        ensure_service(
            name="Vulnerability scan timer off",
            service=f"{UNIT}.timer",
            running=False,
            enabled=False,
        )
        return

    if config.vulnscan_source == "trivy":
        _trivy(config)

    # its own account; the state directory is systemd's StateDirectory= (created, and chowned
    # recursively on a host upgraded from the root scan, at the scan's start)
    ensure_group(name=f"Create group {USER}", group=USER, system=True)
    ensure_user(
        name=f"Create the scan's account {USER}",
        user=USER,
        group=USER,
        home="/nonexistent",
        shell=NOLOGIN,
        system=True,
        create_home=False,
        ensure_home=False,
    )
    textfile_directory("node exporter textfile directory")
    uploaded = None
    if config.vulnscan_data_upload and config.vulnscan_data_file:
        uploaded = put_file(
            "Vulnerability data (offline copy in the tracker's format)",
            str(REPO_ROOT / config.vulnscan_data_upload),
            config.vulnscan_data_file,
            mode="644",
        )
    uploaded_audit = None
    if config.vulnscan_npm_audit_upload:
        uploaded_audit = put_file(
            "npm audit data (staging: its registry refuses audits)",
            str(REPO_ROOT / config.vulnscan_npm_audit_upload),
            NPM_AUDIT_FILE,
            mode="644",
        )
    script = install_host_script(
        "Vulnerability scan script", str(FILES / "vulnscan" / "vulnscan_scan.py"), SCRIPT
    )
    scan_settings = put_text(
        "Vulnerability scan settings",
        CONFIG_PATH,
        json.dumps(scan_config(config), indent=1, sort_keys=True) + "\n",
    )
    contexts = templates(config)
    unit = put_template(
        "Vulnerability scan unit",
        "vulnscan/rave-vulnscan.service.j2",
        SERVICE_PATH,
        **contexts["vulnscan/rave-vulnscan.service.j2"],
    )
    timer = put_template(
        "Vulnerability scan timer",
        "vulnscan/rave-vulnscan.timer.j2",
        TIMER_PATH,
        **contexts["vulnscan/rave-vulnscan.timer.j2"],
    )
    dropin = put_text(
        "Vulnerability scan sandbox",
        DROPIN_PATH,
        dropin_text(
            sandbox(config),
            limits(config),
            "daily vulnerability scan; writes only its state and the textfile metrics",
        ),
    )
    systemd.daemon_reload(
        name="Reload systemd (vulnscan units changed)",
        _if=any_changed(unit, timer, dropin),
    )
    ensure_service(
        name="Enable the daily vulnerability scan timer",
        service=f"{UNIT}.timer",
        running=True,
        enabled=True,
    )
    # a host upgraded from the root scan: the account could not replace a file of another
    # owner in the sticky textfile directory
    stale_metrics = remove_file_not_owned_by(
        name="The scan's metrics are its account's (else removed)",
        path=f"{TEXTFILE_DIR}/rave_vulnscan.prom",
        owner=USER,
    )
    # a first scan right after (re)configuring, so the metrics exist before the first timer run
    server.shell(
        name="Start a vulnerability scan (its code or settings changed)",
        commands=[f"systemctl start --no-block {UNIT}.service"],
        _if=any_changed(
            *[
                op
                for op in (
                    script,
                    scan_settings,
                    unit,
                    dropin,
                    uploaded,
                    uploaded_audit,
                    stale_metrics,
                )
                if op
            ]
        ),
    )
