"""Local staging hosts (rave.staging): egress only through the harness's proxy."""

from rave.secrets.operators import configured_keys
from rave.secrets.store import staging_state_dir

__all__ = [
    "alertmanager_silenced",
    "apt_check_valid_until",
    "egress_proxy",
    "fail2ban_ignore_addresses",
    "grafana_install",
    "nginx_rate_limit_exempt",
    "operator_keys",
    "rave_environment",
    "vulnscan_data_file",
    "vulnscan_data_upload",
    "vulnscan_npm_audit_upload",
]

_STATE = staging_state_dir()  # .staging/ of the checkout, or RAVE_STAGING_DIR
_INSTANCE = (
    (_STATE / "instance-id").read_text().strip() if (_STATE / "instance-id").exists() else "0"
)
_OPERATOR_KEY = _STATE / "id_ed25519.pub"

rave_environment = "staging"
egress_proxy = f"http://10.213.{_INSTANCE}.1:3128"
# the harness's snapshot mirror is frozen; its Release files are past Valid-Until
apt_check_valid_until = False
# .staging/secrets/staging.operator-keys once `rave-secrets operator-keys` manages them,
# otherwise the harness's own key (the one the tests and pyinfra connect with)
operator_keys = configured_keys("staging") or (
    [_OPERATOR_KEY.read_text().strip()] if _OPERATOR_KEY.exists() else []
)
# the control machine (tests, ssh-audit, port scans) must never be banned by fail2ban
fail2ban_ignore_addresses = [f"10.213.{_INSTANCE}.1", f"fd52:a7e0:{_INSTANCE}::1"]
# the control machine (load generator of bench/webhook.py and the host tests) is not rate limited
nginx_rate_limit_exempt = [f"10.213.{_INSTANCE}.1/32", f"fd52:a7e0:{_INSTANCE}::1/128"]
# Grafana's APT repository is unreachable from staging: deploy its configuration only
grafana_install = False
# staging never notifies anyone
alertmanager_silenced = True
# no vulnerability database is reachable from staging: a labelled sample in the tracker's format
vulnscan_data_file = "/var/lib/rave/vulnscan-data/tracker.json"
vulnscan_data_upload = "files/vulnscan/sample-tracker.json"
# the npm registry reached from staging refuses `npm audit` (405): a clean audit in npm's format
# stands in, the router's tree and its package count are still the real ones
vulnscan_npm_audit_upload = "files/vulnscan/sample-npm-audit.json"
