"""The operators' SSH public keys of an environment (not secrets, kept next to them).

  <dir>/<env>.operator-keys   authorized_keys format, one `ssh-ed25519 AAAA... NAME` a line

group_data/<env>.py reads it into `operator_keys`; the hardening task (and ops/operator_keys.py)
makes the operator's authorized_keys exactly that list. `rave-secrets operator-keys rotate`
changes it: add the new key, deploy, log in with the new key on every host, and only then
remove the old key and deploy again.
"""

from __future__ import annotations

from pathlib import Path

from rave.secrets.store import StoreError, _atomic_write, secrets_dir

SUFFIX = ".operator-keys"
ALGORITHM = "ssh-ed25519"


def keys_path(env: str, directory: Path | None = None) -> Path:
    return (directory if directory is not None else secrets_dir(env)) / f"{env}{SUFFIX}"


def configured_keys(env: str) -> list[str]:
    """For group_data: the listed lines as they are (the settings model validates them and names
    the setting); an absent file lists none."""
    path = keys_path(env)
    if not path.exists():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def key_id(key: str) -> str:
    """A key without its comment: what sshd compares."""
    return " ".join(key.split()[:2])


def parse_key(text: str, source: str) -> str:
    """One ssh-ed25519 public key line (comment kept), or a StoreError naming the source."""
    parts = text.strip().split()
    if len(parts) < 2 or parts[0] != ALGORITHM:
        shown = text.strip()[:40]
        raise StoreError(f"{source}: not an {ALGORITHM} public key: {shown!r}")
    return " ".join(parts)


def read_keys(path: Path) -> list[str]:
    if not path.exists():
        return []
    keys = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if line and not line.startswith("#"):
            keys.append(parse_key(line, f"{path}:{number}"))
    return keys


def write_keys(path: Path, env: str, keys: list[str]) -> None:
    ids = [key_id(k) for k in keys]
    if not keys:
        raise StoreError(f"{path}: refusing to write no operator key (nobody could log in)")
    if len(set(ids)) != len(ids):
        raise StoreError(f"{path}: a key appears twice")
    header = (
        f"# Operator SSH keys of {env} (authorized_keys of operator_user), one a line.\n"
        "# Rotate with `rave-secrets operator-keys rotate` (docs/secrets.md).\n"
    )
    _atomic_write(path, header + "".join(f"{k}\n" for k in keys))
