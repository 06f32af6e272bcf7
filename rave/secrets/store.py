"""The files of one secrets environment.

  <dir>/<env>.age         armored age file: the JSON of SecretsModel (the only copy of the values)
  <dir>/<env>.recipients  who can decrypt it; `age -R` compatible, a '# team: NAME' or
                          '# host: NAME' comment line before each key
  <dir>/<env>.versions    JSON {secret name: version}, bumped whenever a value changes; the
                          deploy uses it to restart only the readers of changed secrets
  <dir>/<env>.present     JSON {optional secret: true, or the names of its keys (never a
                          value)}: the optional secrets that hold a value, so host data that
                          needs one (a remote backup repository) is checked before connecting

<dir> is secrets/ in the repo, except for `staging`, whose files live in the staging state
directory (.staging/secrets, generated per worktree by the staging harness). RAVE_SECRETS_DIR
overrides both.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rave.secrets import crypto
from rave.secrets.model import (
    SECRET_NAMES,
    SecretsModel,
    from_json,
    is_optional,
    is_set,
    to_json,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
STAGING_ENVIRONMENT = "staging"
IDENTITY_ENV = "RAVE_AGE_IDENTITY"
STAGING_IDENTITY = "age-identity.txt"

Kind = Literal["team", "host"]


class StoreError(Exception):
    pass


def staging_state_dir() -> Path:
    configured = os.environ.get("RAVE_STAGING_DIR")
    return Path(configured).expanduser() if configured else REPO_ROOT / ".staging"


def secrets_dir(env: str) -> Path:
    configured = os.environ.get("RAVE_SECRETS_DIR")
    if configured:
        return Path(configured).expanduser()
    if env == STAGING_ENVIRONMENT:
        return staging_state_dir() / "secrets"
    return REPO_ROOT / "secrets"


def default_identity(env: str) -> Path:
    configured = os.environ.get(IDENTITY_ENV)
    if configured:
        return Path(configured).expanduser()
    if env == STAGING_ENVIRONMENT:
        return staging_state_dir() / STAGING_IDENTITY
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config_home / "rave" / "age-identity.txt"


@dataclass(frozen=True)
class Recipient:
    kind: Kind
    name: str
    key: str  # 'age1...' or 'ssh-ed25519 AAAA...' (no comment)

    def line(self) -> str:
        suffix = f" {self.name}" if self.kind == "host" else ""
        return f"# {self.kind}: {self.name}\n{self.key}{suffix}\n"


def parse_recipients(text: str, source: str = "recipients") -> list[Recipient]:
    recipients: list[Recipient] = []
    pending: tuple[Kind, str] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            label, _, name = line[1:].strip().partition(":")
            if label in ("team", "host") and name.strip():
                pending = (label, name.strip())  # type: ignore[assignment]
            continue
        try:
            key = crypto.normalize_key(line)
        except crypto.CryptoError as error:
            raise StoreError(f"{source}:{number}: {error}") from None
        kind: Kind = "host" if key.startswith("ssh-") else "team"
        if pending is not None and pending[0] == kind:
            name = pending[1]
        elif kind == "host" and len(line.split()) > 2:
            name = line.split()[2]
        else:
            raise StoreError(f"{source}:{number}: key without a '# {kind}: NAME' line before it")
        recipients.append(Recipient(kind, name, key))
        pending = None
    return recipients


def format_recipients(env: str, recipients: list[Recipient]) -> str:
    header = (
        f"# Recipients of the {env} secrets: `age -R` compatible, managed by rave-secrets.\n"
        "# Team members: age keys. Hosts: their /etc/ssh/ssh_host_ed25519_key.pub.\n"
    )
    team = [r for r in recipients if r.kind == "team"]
    hosts = [r for r in recipients if r.kind == "host"]
    return header + "".join(r.line() for r in team + hosts)


def _atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write public data (ciphertext, keys, versions) atomically next to its destination."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Environment:
    name: str
    encrypted_path: Path
    recipients_path: Path
    versions_path: Path

    @classmethod
    def named(cls, env: str, directory: Path | None = None) -> Environment:
        if not env or not env.replace("-", "").isalnum() or not env[0].isalpha():
            raise StoreError(f"invalid environment name {env!r}")
        base = directory if directory is not None else secrets_dir(env)
        return cls(env, base / f"{env}.age", base / f"{env}.recipients", base / f"{env}.versions")

    @classmethod
    def for_host(
        cls, env: str, secrets_file: str | None, recipients_file: str | None
    ) -> Environment:
        """The environment a host's settings point at (relative paths from the repo root)."""
        default = cls.named(env)
        encrypted = REPO_ROOT / secrets_file if secrets_file else default.encrypted_path
        recipients = (
            REPO_ROOT / recipients_file if recipients_file else encrypted.with_suffix(".recipients")
        )
        return cls(env, encrypted, recipients, encrypted.with_suffix(".versions"))

    def exists(self) -> bool:
        return self.encrypted_path.exists()

    # -- recipients -----------------------------------------------------------------------
    def recipients(self) -> list[Recipient]:
        if not self.recipients_path.exists():
            return []
        return parse_recipients(self.recipients_path.read_text(), str(self.recipients_path))

    def save_recipients(self, recipients: list[Recipient]) -> None:
        names = [(r.kind, r.name) for r in recipients]
        if len(set(names)) != len(names):
            raise StoreError("a recipient name appears twice")
        _atomic_write(self.recipients_path, format_recipients(self.name, recipients))

    # -- versions -------------------------------------------------------------------------
    def versions(self) -> dict[str, int]:
        if not self.versions_path.exists():
            return {}
        data: dict[str, Any] = json.loads(self.versions_path.read_text())
        return {str(k): int(v) for k, v in data.items()}

    @property
    def present_path(self) -> Path:
        return self.versions_path.with_suffix(".present")

    def present(self) -> dict[str, Any]:
        """Optional secrets that hold a value (a file written before they existed: none)."""
        if not self.present_path.exists():
            return {}
        data: dict[str, Any] = json.loads(self.present_path.read_text())
        return data

    # -- values ---------------------------------------------------------------------------
    def armored(self) -> str:
        if not self.exists():
            raise StoreError(
                f"no secrets file {self.encrypted_path}: run `rave-secrets init --env {self.name}`"
            )
        return self.encrypted_path.read_text()

    def decrypt(self, identities: list[Any]) -> SecretsModel:
        plaintext = crypto.decrypt(self.armored(), identities)
        return from_json(plaintext, str(self.encrypted_path))

    def write(self, model: SecretsModel, previous: SecretsModel | None) -> list[str]:
        """Encrypt model to the current recipients; returns the names whose value changed."""
        recipients = self.recipients()
        if not any(r.kind == "team" for r in recipients):
            raise StoreError(
                f"{self.recipients_path} has no team member: nobody could edit the file afterwards"
            )
        armored = crypto.encrypt(to_json(model), [r.key for r in recipients])
        changed = [
            name
            for name in SECRET_NAMES
            if previous is None or getattr(previous, name) != getattr(model, name)
        ]
        versions = self.versions()
        for name in changed:
            versions[name] = versions.get(name, 0) + 1
        _atomic_write(self.encrypted_path, armored)
        _atomic_write(self.versions_path, json.dumps(versions, indent=1, sort_keys=True) + "\n")
        _atomic_write(
            self.present_path, json.dumps(present(model), indent=1, sort_keys=True) + "\n"
        )
        return changed

    def reencrypt(self, identities: list[Any]) -> None:
        """Encrypt the same values to the (changed) recipients."""
        model = self.decrypt(identities)
        self.write(model, previous=model)

    def encrypted_to_host(self, key: str) -> bool:
        """Is the file (not just the recipients list) encrypted to this ssh-ed25519 host key?"""
        return crypto.ssh_key_tag(key) in crypto.ssh_tags_in(self.armored())


def present(model: SecretsModel) -> dict[str, Any]:
    """Public facts about the optional secrets: which hold a value (a dict: its key names)."""
    result: dict[str, Any] = {}
    for name in SECRET_NAMES:
        if is_optional(name) and is_set(model, name):
            value = getattr(model, name)
            result[name] = sorted(value) if isinstance(value, dict) else True
    return result
