"""What the deploy needs from the secrets concern (control side; never decrypts anything).

Host layout:
  /etc/rave/secrets.age                  the encrypted file (0600 root), as in the repo
  /etc/rave/secrets.d/<component>.json   manifest: the component's user and {secret: version}
  /usr/local/sbin/rave-secrets-install   decrypts with the host's SSH key, splits into files
  rave-secrets.service                   oneshot at boot; `systemctl reload` re-runs it
  /run/rave/secrets/<component>/<name>   tmpfs; root's dir 0550 and files 0440, group the user's
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rave.components import COMPONENTS, Component, own_accounts
from rave.secrets.model import SECRET_NAMES, default_file_content, is_optional
from rave.secrets.store import Environment

SECRETS_ROOT = "/run/rave/secrets"
REMOTE_ENCRYPTED = "/etc/rave/secrets.age"
REMOTE_MANIFESTS = "/etc/rave/secrets.d"
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key"
INSTALL_SCRIPT = "/usr/local/sbin/rave-secrets-install"
UNIT = "rave-secrets"
NOLOGIN = "/usr/sbin/nologin"


@dataclass(frozen=True)
class Account:
    """A service account, created with the parameters its Debian package would use."""

    name: str
    home: str
    shell: str = NOLOGIN
    ensure_home: bool = True  # False: systemd's StateDirectory= (or nobody) makes the home


# Accounts a package creates when installed: created here first (same name, system, same home
# and shell) when absent, so the secrets exist before the package's unit first starts. Existing
# accounts are never modified. www-data always exists (base-passwd).
ACCOUNTS: dict[str, Account] = {
    "postgres": Account("postgres", "/var/lib/postgresql", "/bin/bash"),
    "prometheus": Account("prometheus", "/var/lib/prometheus"),
    # its home is the package's tree, which dpkg (root) fills: never the account's
    "grafana": Account("grafana", "/usr/share/grafana", "/bin/false", ensure_home=False),
    "rave-webhook": Account("rave-webhook", "/var/lib/rave-webhook"),
    "rave-ccr": Account("rave-ccr", "/var/lib/rave-ccr"),
}


def secret_path(component: str, name: str) -> str:
    """Where `component` reads secret `name` on the host (it must declare it in components.py)."""
    for candidate in COMPONENTS:
        if candidate.name == component:
            if name not in candidate.secrets:
                raise KeyError(f"component {component} does not declare secret {name}")
            return f"{SECRETS_ROOT}/{component}/{name}"
    raise KeyError(f"unknown component {component}")


def readers() -> list[Component]:
    """Components that read secrets (each has a user)."""
    return [c for c in COMPONENTS if c.secrets]


def check_declarations() -> list[str]:
    """Problems between components.py and the model (empty list: consistent)."""
    problems = []
    for c in readers():
        if c.user is None:
            problems.append(f"component {c.name} reads secrets but declares no user")
        for name in c.secrets:
            if name not in SECRET_NAMES:
                problems.append(f"component {c.name} reads {name}, not in the secrets model")
    return problems


def manifest(component: Component, versions: dict[str, int]) -> str:
    """The manifest of one component: user and {secret: version} (the version changes with it),
    plus the file content of its optional secrets for an encrypted file that lacks them."""
    data: dict[str, Any] = {
        "component": component.name,
        "user": component.user,
        "secrets": {name: versions.get(name, 0) for name in component.secrets},
    }
    defaults = {n: default_file_content(n) for n in component.secrets if is_optional(n)}
    if defaults:  # only then: the other components' manifests stay byte for byte the same
        data["defaults"] = defaults
    if component.root_only_secrets:
        data["root_only"] = sorted(component.root_only_secrets)
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def reader_users() -> list[str]:
    """The accounts that read secrets (each needs to exist before its secrets are written)."""
    return sorted({c.user for c in readers() if c.user is not None})


def account_names() -> list[str]:
    """The accounts the secrets task makes sure exist (readers and components' own accounts)."""
    return sorted(set(reader_users()) | {own.name for _, own in own_accounts()})


def accounts_to_create(existing_users: set[str]) -> list[Account]:
    """Every reader's account and every component's own account (components.py) not yet there."""
    wanted = {
        name: ACCOUNTS.get(name, Account(name, f"/var/lib/{name}")) for name in reader_users()
    }
    for _, own in own_accounts():
        wanted[own.name] = Account(own.name, own.home, ensure_home=False)
    return [account for name, account in sorted(wanted.items()) if name not in existing_users]


def consumer_units() -> list[str]:
    return [f"{c.unit}.service" for c in readers()]


class HostNotRecipient(Exception):
    pass


def recipient_problem(env: Environment, host_name: str, host_key: str | None) -> str | None:
    """Why secrets must NOT be sent to this host (None: it may receive them).

    Decided on the control machine from the host's key fact, before any operation runs.
    """
    add = f"rave-secrets recipients add --env {env.name} --host {host_name} --key '{{key}}'"
    if not host_key or not host_key.startswith("ssh-ed25519 "):
        return (
            f"host {host_name} has no ssh-ed25519 host key (/etc/ssh/ssh_host_ed25519_key.pub):"
            " it cannot decrypt the secrets"
        )
    key = " ".join(host_key.split()[:2])
    if not env.exists():
        return f"no secrets file {env.encrypted_path}: run `rave-secrets init --env {env.name}`"
    listed = [r for r in env.recipients() if r.kind == "host" and r.key == key]
    if not listed:
        return (
            f"host {host_name} is not a recipient of the {env.name} secrets: refusing to send"
            f" them. If this host should read them, run:\n    {add.format(key=key)}\n"
            "then commit the re-encrypted file and deploy again"
        )
    if not env.encrypted_to_host(key):
        return (
            f"{env.encrypted_path} is not encrypted to host {host_name}'s key although"
            f" {env.recipients_path} lists it: run `rave-secrets reencrypt --env {env.name}`"
        )
    return None


# -- restarts of the readers ---------------------------------------------------------------------
# tasks/secrets.py records, per host, the operation that uploaded each component's manifest; the
# manifest changes exactly when one of the component's secrets got a new version.
_manifest_ops: dict[str, dict[str, Any]] = {}


def record_manifest_op(host_name: str, component: str, op: Any) -> None:
    _manifest_ops.setdefault(host_name, {})[component] = op


def secrets_changed(component: str) -> Callable[[], bool]:
    """For `_if=`: true when the current host's copy of this component's secrets changed in this
    run (after the secrets task reloaded rave-secrets.service). Restart the reader then."""
    from pyinfra import host

    host_name = host.name

    def changed() -> bool:
        op = _manifest_ops.get(host_name, {}).get(component)
        return bool(op is not None and op.did_change())

    return changed
