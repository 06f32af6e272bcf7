"""Scheduled host-side validation: rave-validate.timer runs files/ops/rave-validate-host.

The expectations are rendered here from rave.components and the mode (one JSON file); the
script needs only Debian's python3. Results go to the journal and to node-exporter textfile
metrics (rave_validation_failed_checks, rave_validation_last_run_timestamp_seconds).
"""

import json

from pyinfra.api import deploy
from pyinfra.operations import systemd
from pyinfra.operations.util import any_changed

from rave.components import COMPONENTS, monitoring_ports, public_ports
from rave.deploykit import (
    ensure_service,
    install_host_script,
    put_text,
    settings,
)
from rave.facts import APT_LISTS, TEXTFILE_DIR
from rave.ops.validate import EXPECTED_SSHD, SPOOL_STALLED_MAX_SECONDS, webhook_health_url
from rave.render import FILES
from rave.settings import HostSettings
from rave.topology import MONITORING_HOST_COMPONENTS

SCRIPT = "/usr/local/sbin/rave-validate-host"
CONFIG = "/etc/rave/validate.json"
UNIT_DIR = "/etc/systemd/system"

SERVICE = f"""# Managed by RAVE deploy: host-side validation (read-only checks)
[Unit]
Description=RAVE host-side validation
After=network-online.target

[Service]
Type=oneshot
ExecStart={SCRIPT}
# a FAIL is reported in the journal and by the metric, not as a failed unit
SuccessExitStatus=1
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ReadWritePaths=-{TEXTFILE_DIR}
MemoryMax=64M
CPUQuota=25%
"""

TIMER = """# Managed by RAVE deploy: run the host-side validation every 15 minutes
[Unit]
Description=RAVE host-side validation, every 15 minutes

[Timer]
OnBootSec=5min
OnUnitActiveSec=15min
RandomizedDelaySec=60

[Install]
WantedBy=timers.target
"""


def validate_config(config: HostSettings) -> str:
    limits = config.profile.limits
    # a monitoring host (rave/topology.py) runs only its share: the rest is not missing there
    here = [
        c for c in COMPONENTS if not config.monitoring_role or c.name in MONITORING_HOST_COMPONENTS
    ]
    # MONITORING ports listen beyond loopback when the firewall admits named monitoring
    # sources (rave/observability.py listen_address): expected then, not exposed by mistake
    sources = config.firewall_monitoring_sources or config.monitoring_addresses
    ports = sorted(set(public_ports()) | (set(monitoring_ports()) if sources else set()))
    data = {
        "units": {c.name: f"{c.unit}.service" for c in here},
        "optional": sorted(c.name for c in here if c.optional),
        "memory_max": {
            name: limit.memory_max_mb * 1024 * 1024 for name, limit in sorted(limits.items())
        },
        "public_ports": ports,
        "sshd": EXPECTED_SSHD,
        "textfile_dir": TEXTFILE_DIR,
        # checked where the webhook unit is installed: its queue drains, no dead letters wait
        "webhook": {"url": webhook_health_url(), "stalled_max_seconds": SPOOL_STALLED_MAX_SECONDS},
        "apt_lists": APT_LISTS,
        "apt_security_lists_max_age_days": config.apt_security_lists_max_age_days,
    }
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


@deploy("Ops")
def ops():
    config = settings()
    install_host_script(
        "Host-side validation script", str(FILES / "ops" / "rave-validate-host"), SCRIPT
    )
    put_text("Host-side validation expectations", CONFIG, validate_config(config))
    units = [
        put_text("rave-validate.service", f"{UNIT_DIR}/rave-validate.service", SERVICE),
        put_text("rave-validate.timer", f"{UNIT_DIR}/rave-validate.timer", TIMER),
    ]
    systemd.daemon_reload(
        name="Reload systemd (validation units changed)",
        _if=any_changed(*units),
    )
    ensure_service(
        name="Host-side validation timer",
        service="rave-validate.timer",
        running=True,
        enabled=True,
    )
