"""The staging environment: generated values and a generated team key, so nobody needs keys.

Called by the staging harness (rave/staging.py) once the hosts are up. Idempotent: existing
values are kept; the file is re-encrypted only when its recipients or values change.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from pathlib import Path
from typing import Any

from rave.secrets import crypto, generate
from rave.secrets.model import AlertReceiver, SecretsModel
from rave.secrets.store import STAGING_ENVIRONMENT, STAGING_IDENTITY, Environment, Recipient

TEAM_MEMBER = "staging-operator"
CERT_MIN_DAYS = 30


def _log(message: str) -> None:
    sys.stderr.write(f"rave-secrets: {message}\n")


def ensure_identity(path: Path) -> str:
    """The staging team identity (created 0600 if absent); returns its public key."""
    if not path.exists():
        secret, public = crypto.generate_identity()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(crypto.identity_text(secret, public, "RAVE staging team identity"))
    keys = crypto.public_keys_of(path)
    return keys[0]


def _addresses(state_dir: Path, names: list[str]) -> list[str]:
    """Addresses of the staging hosts from the harness's hosts.json (best effort)."""
    try:
        entries: Any = json.loads((state_dir / "hosts.json").read_text())
    except (OSError, ValueError):
        return []
    found = []
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and entry.get("name") in names:
            try:
                found.append(str(ipaddress.ip_address(str(entry.get("address")))))
            except ValueError:
                continue
    return found


def generated_values(names: list[str], previous: SecretsModel | None = None) -> SecretsModel:
    """Values for staging: keep the previous ones, generate what is missing or outdated."""
    data: dict[str, Any] = previous.model_dump(mode="json") if previous else {}
    cert = data.get("tls_certificate")
    if (
        cert is None
        or not set(names) <= set(generate.certificate_names(cert))
        or not generate.certificate_valid_days(cert, CERT_MIN_DAYS)
    ):
        covered = list(dict.fromkeys(names + (generate.certificate_names(cert) if cert else [])))
        data["tls_certificate"], data["tls_private_key"] = generate.self_signed(covered)
    data.setdefault("webhook_hmac_secrets", [generate.hmac_secret()])
    data.setdefault("webhook_standard_secrets", [generate.standard_webhooks_secret()])
    for name in (
        "postgres_webhook_password",
        "postgres_exporter_password",
        "grafana_admin_password",
        "backup_repository_password",
    ):
        data.setdefault(name, generate.password())
    if not data.get("backup_pgbackrest_cipher_password"):
        data["backup_pgbackrest_cipher_password"] = generate.password()
    data.setdefault(
        "alertmanager_receivers",
        [AlertReceiver.model_validate({"name": "default"}).model_dump(mode="json")],
    )
    data.setdefault("ccr_api_keys", {})
    if not data.get("ccr_ui_password_hash") or not data.get("ccr_ui_password"):
        data["ccr_ui_password"] = generate.password()
        data["ccr_ui_password_hash"] = generate.htpasswd_line(data["ccr_ui_password"])
    return SecretsModel.model_validate(data)


def ensure_staging_environment(state_dir: Path, host_public_keys: dict[str, str]) -> Environment:
    """Create or update .staging/secrets/staging.{age,recipients,versions} for these hosts."""
    state_dir = Path(state_dir)
    env = Environment.named(STAGING_ENVIRONMENT, state_dir / "secrets")
    identity_path = state_dir / STAGING_IDENTITY
    team_key = ensure_identity(identity_path)
    identities = crypto.load_identities(identity_path)

    wanted = [Recipient("team", TEAM_MEMBER, team_key)]
    wanted += [
        Recipient("host", name, crypto.normalize_key(key))
        for name, key in sorted(host_public_keys.items())
    ]
    wanted_names = {(r.kind, r.name) for r in wanted}
    kept = [r for r in env.recipients() if (r.kind, r.name) not in wanted_names]
    recipients = wanted[:1] + [r for r in kept if r.kind == "team"] + wanted[1:]
    recipients += [r for r in kept if r.kind == "host"]

    previous: SecretsModel | None = None
    if env.exists():
        try:
            previous = env.decrypt(identities)
        except (crypto.CryptoError, ValueError) as error:
            _log(f"cannot read the existing staging secrets ({error}); generating new ones")
    names = sorted(host_public_keys)
    names += [*_addresses(state_dir, names), "localhost", "127.0.0.1"]
    model = generated_values(names, previous)

    recipients_changed = recipients != env.recipients()
    host_keys_missing = env.exists() and not all(
        env.encrypted_to_host(r.key) for r in recipients if r.kind == "host"
    )
    if recipients_changed:
        env.save_recipients(recipients)
    if previous is None or model != previous or recipients_changed or host_keys_missing:
        changed = env.write(model, previous)
        _log(
            f"staging secrets written for {', '.join(sorted(host_public_keys)) or 'no host'}"
            + (f" (changed: {', '.join(changed)})" if changed else " (re-encrypted)")
        )
    return env
