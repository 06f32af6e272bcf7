"""Claude Code Router (@musistudio/claude-code-router): a pinned npm release on Debian's Node.js,
installed through the egress proxy into /opt/rave/ccr, run as a sandboxed unit on loopback.

Its config.json holds the provider keys: it is generated at service start into the unit's
tmpfs RuntimeDirectory (rave/ccrconfig.py), never uploaded, never on a command line.
"""

from __future__ import annotations

import json

from pyinfra import host
from pyinfra.api import FactBase, deploy
from pyinfra.operations import server

from rave.components import Exposure, component
from rave.deploykit import (
    ensure_packages,
    install_host_script,
    owned_service,
    put_file,
    settings,
)
from rave.render import render
from rave.sandbox import DEFAULT_SYSCALL_FILTER, Sandbox, dropin_text
from rave.secrets.deploy import secret_path, secrets_changed
from rave.settings import HostSettings
from rave.settings.ccr import NodeSource

PACKAGE = "@musistudio/claude-code-router"
_DECLARED_TREE = component("ccr").npm_tree
assert _DECLARED_TREE, "rave/components.py declares the router's npm_tree"
PREFIX = _DECLARED_TREE  # where npm installs it; rave-vulnscan audits the same directory
PACKAGE_JSON = f"{PREFIX}/node_modules/{PACKAGE}/package.json"
SETTINGS_FILE = "/etc/rave-ccr/settings.json"
CONFIG_SCRIPT = "/usr/local/sbin/rave-ccr-config"
COMPAT_FILE = "/usr/local/lib/rave-ccr/node18-compat.js"
RUNTIME_DIR = "rave-ccr"
UNIT = component("ccr").unit
NODE_PACKAGES = ("nodejs", "npm")


class InstalledCcrVersion(FactBase):
    """Version of the CCR package under the prefix (None when not installed)."""

    def command(self, package_json: str) -> str:
        return f"cat {package_json} 2>/dev/null || true"

    def process(self, output: list[str]) -> str | None:
        try:
            version = json.loads("\n".join(output)).get("version")
        except (ValueError, AttributeError):
            return None
        return version if isinstance(version, str) else None


def port() -> int:
    return next(p.number for p in component("ccr").ports if p.exposure is Exposure.LOOPBACK)


def sandbox(config: HostSettings) -> Sandbox:
    return Sandbox(
        read_write_paths=(f"/run/{RUNTIME_DIR}",),
        address_families=("AF_INET", "AF_INET6", "AF_UNIX"),
        # V8's JIT writes and then executes code pages: W^X would kill node at start
        memory_deny_write_execute=False,
        # V8 protects its code space with memory protection keys (pkey_alloc, pkey_mprotect):
        # without @pkey node 18 dies with SIGSYS at start
        syscall_filter=(
            f"{DEFAULT_SYSCALL_FILTER[0]} @pkey",
            *DEFAULT_SYSCALL_FILTER[1:],
        ),
    )


def app_settings(config: HostSettings) -> dict[str, object]:
    """Non-secret input of rave-ccr-config (the keys come from the secret at start)."""
    return {
        "host": "127.0.0.1",
        "port": port(),
        "api_timeout_ms": config.ccr_api_timeout_ms,
        "default_route": config.ccr_default_route,
        "proxy_url": config.egress_proxy or "",
        "providers": [p.model_dump() for p in config.ccr_providers],
    }


def unit_context(config: HostSettings) -> dict[str, object]:
    return {
        "version": config.ccr_version,
        "prefix": PREFIX,
        "user": component("ccr").user,
        "runtime_dir": RUNTIME_DIR,
        "config_script": CONFIG_SCRIPT,
        "compat_file": COMPAT_FILE,
        "settings_file": SETTINGS_FILE,
        "secret_file": secret_path("ccr", "ccr_api_keys"),
    }


def templates(config: HostSettings) -> dict[str, dict[str, object]]:
    return {"ccr/rave-ccr.service.j2": unit_context(config)}


@deploy("Claude Code Router")
def ccr() -> None:
    config = settings()
    if not config.ccr_install:
        return
    if config.ccr_node_source is not NodeSource.DEBIAN:
        raise ValueError(
            "ccr_node_source=nodesource: add the signed repository first (docs/ccr.md)"
        )
    user = component("ccr").user
    assert user is not None
    ensure_packages("Node.js and npm (Debian's)", list(NODE_PACKAGES))

    installed = host.get_fact(InstalledCcrVersion, package_json=PACKAGE_JSON)
    install = None
    if installed != config.ccr_version:
        install = server.shell(
            name=f"Install {PACKAGE}@{config.ccr_version} (was {installed or 'absent'})",
            commands=[
                f"install -d -m 755 -o root -g root {PREFIX}",
                f"cd {PREFIX} && npm install --prefix {PREFIX} --omit=dev --ignore-scripts "
                f"--no-audit --no-fund --no-update-notifier {PACKAGE}@{config.ccr_version}",
                f"chmod -R go-w,a+rX {PREFIX}",
            ],
            # the registry is reached through the egress proxy: one dropped fetch (seen with 10
            # hosts installing at once) must not fail the host
            _retries=2,
            _retry_delay=15,
        )

    script = install_host_script(
        "Config generator (runs at start)", "rave/ccrconfig.py", CONFIG_SCRIPT
    )
    compat = put_file(
        "Node 18 compatibility preload (global File)",
        "files/ccr/node18-compat.js",
        COMPAT_FILE,
        mode="644",
    )
    owned_service(
        "Router",
        UNIT,
        group=user,
        settings_path=SETTINGS_FILE,
        settings=app_settings(config),
        unit_text=render("ccr/rave-ccr.service.j2", **unit_context(config)),
        sandbox_text=dropin_text(
            sandbox(config),
            config.profile.limits_for("ccr"),
            "Claude Code Router: loopback only, writes only its RuntimeDirectory; "
            "MemoryDenyWriteExecute=no because Node's V8 JIT needs writable+executable pages, "
            "@pkey syscalls for V8's code-space protection keys",
        ),
        secrets_changed=secrets_changed("ccr"),
        restart_on=[op for op in (install, script, compat) if op is not None],
    )
