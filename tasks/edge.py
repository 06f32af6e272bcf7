"""nginx: the only public TLS port, routes derived from rave.components, `nginx -t` first.

The configuration is one file. A changed configuration is first uploaded as a candidate and
tested with `nginx -t -c <candidate>`; only if that passes is it installed and nginx reloaded,
so a broken configuration fails the deploy while the old one keeps serving.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import Sha1File
from pyinfra.operations import files, server, systemd
from pyinfra.operations.util import any_changed

from rave.components import Exposure, component, routes
from rave.deploykit import (
    ensure_packages,
    ensure_service,
    put_template,
    put_text,
    settings,
)
from rave.observability import enabled_components
from rave.render import render
from rave.sandbox import DEFAULT_SYSCALL_FILTER, Sandbox, dropin_text, limits_dropin_text
from rave.secrets.deploy import secret_path, secrets_changed
from rave.settings import HostSettings

NGINX_CONF = "/etc/nginx/nginx.conf"
CANDIDATE = "/etc/nginx/rave-candidate.conf"
STATUS_ROOT = "/var/www/rave"
DROPIN_DIR = "/etc/systemd/system/nginx.service.d"

# The master runs as root (it opens the logs, the TLS key and the pid file, then its workers
# drop to www-data): only the capabilities for that switch and for its own files (the logs
# and temp directories are www-data's), ~@privileged allowed for setuid/setgroups/chown.
SANDBOX = Sandbox(
    read_write_paths=("/var/log/nginx", "/var/lib/nginx", "/run"),  # /run: /run/nginx.pid
    capabilities=("CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_DAC_OVERRIDE"),
    syscall_filter=(
        DEFAULT_SYSCALL_FILTER[0],
        "~@resources @mount @debug @cpu-emulation @obsolete @raw-io",
        *DEFAULT_SYSCALL_FILTER[2:],
    ),
    extra=(("PrivateMounts", "yes"), ("SystemCallErrorNumber", "EPERM")),
)

SECRETS_DROPIN = """# Managed by RAVE deploy: the TLS key and certificate come from rave-secrets
[Unit]
After=rave-secrets.service
Requires=rave-secrets.service
"""


def _port(name: str, exposure: Exposure) -> int:
    return next(p.number for p in component(name).ports if p.exposure is exposure)


def nginx_context(config: HostSettings) -> dict[str, object]:
    return {
        "worker_connections": config.nginx_worker_connections,
        "max_body_bytes": config.webhook_max_body_bytes,
        "body_buffer_bytes": min(config.webhook_max_body_bytes, 1_048_576),
        "rate_limit_exempt": config.nginx_rate_limit_exempt,
        "rate_per_second": config.nginx_rate_limit_per_second,
        "rate_burst": config.nginx_rate_limit_burst,
        "conn_per_client": config.nginx_conn_limit_per_client,
        "webhook_port": _port("webhook", Exposure.LOOPBACK),
        "stub_status_port": _port("nginx", Exposure.LOOPBACK),
        "public_port": _port("nginx", Exposure.PUBLIC),
        "hsts_max_age": config.nginx_hsts_max_age,
        "server_name": config.nginx_server_name,
        "certificate": secret_path("nginx", "tls_certificate"),
        "private_key": secret_path("nginx", "tls_private_key"),
        "htpasswd": secret_path("nginx", "ccr_ui_password_hash"),
        "status_root": STATUS_ROOT,
        "routes": routes(),
        "debug": config.debug_mode,
    }


def status_context(config: HostSettings) -> dict[str, Any]:
    # only what this host runs: a link to a component left out (Grafana where its APT repository
    # is unreachable) would answer 502
    listed = [
        {"path": c.route.path, "purpose": c.ports[0].purpose if c.ports else c.name}
        for c in enabled_components(config)
        if c.route is not None and not c.route.methods
    ]
    return {
        "hostname": config.hostname,
        "environment": config.rave_environment,
        "rave_mode": config.rave_mode.value,
        "routes": listed,
        "debug": config.debug_mode,
    }


def templates(config: HostSettings) -> dict[str, dict[str, object]]:
    return {
        "nginx/nginx.conf.j2": nginx_context(config),
        "nginx/index.html.j2": status_context(config),
    }


@deploy("Edge")
def edge() -> None:
    config = settings()
    ensure_packages("Install nginx", component("nginx").packages)

    files.link(
        name="No default site (nothing on port 80)",
        path="/etc/nginx/sites-enabled/default",
        present=False,
    )
    put_template(
        "Status page",
        "nginx/index.html.j2",
        f"{STATUS_ROOT}/index.html",
        **status_context(config),
    )

    dropins = [
        put_text(
            "nginx starts after the secrets are in place",
            f"{DROPIN_DIR}/rave-secrets.conf",
            SECRETS_DROPIN,
        ),
        put_text(
            "nginx resource limits of the mode",
            f"{DROPIN_DIR}/rave-limits.conf",
            limits_dropin_text(config.profile.limits_for("nginx")),
        ),
        put_text(
            "nginx sandbox",
            f"{DROPIN_DIR}/sandbox.conf",
            dropin_text(SANDBOX, None, "nginx sandbox (tasks/edge.py)"),
        ),
    ]

    text = render("nginx/nginx.conf.j2", **nginx_context(config))
    if host.get_fact(Sha1File, path=NGINX_CONF) != hashlib.sha1(text.encode()).hexdigest():
        put_text("Candidate nginx configuration", CANDIDATE, text)
        server.shell(
            name="Test the candidate configuration (nginx -t) before installing it",
            commands=[f"nginx -t -q -c {CANDIDATE}"],
        )
    installed = put_text("Install the tested nginx configuration", NGINX_CONF, text)

    systemd.daemon_reload(
        name="Reload systemd (nginx drop-ins changed)",
        _if=any_changed(*dropins),
    )
    ensure_service(
        name="Restart nginx (unit drop-ins changed)",
        service="nginx",
        running=True,
        restarted=True,
        _if=any_changed(*dropins),
    )
    ensure_service(
        name="Reload nginx (configuration or certificate changed)",
        service="nginx",
        running=True,
        enabled=True,
        reloaded=True,
        _if=lambda: installed.did_change() or secrets_changed("nginx")(),
    )
    ensure_service(name="nginx running", service="nginx", running=True, enabled=True)
