"""age encryption with pyrage: armored, to team age keys and ssh-ed25519 host keys.

Plaintext only ever exists in memory here: nothing in this module writes a file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path
from typing import Any

import pyrage
from pyrage import ssh, x25519

ARMOR_BEGIN = "-----BEGIN AGE ENCRYPTED FILE-----"
ARMOR_END = "-----END AGE ENCRYPTED FILE-----"


class CryptoError(Exception):
    pass


def recipient_object(key: str) -> Any:
    """A pyrage recipient from 'age1...' or 'ssh-ed25519 AAAA... [comment]'."""
    key = key.strip()
    try:
        if key.startswith("age1"):
            return x25519.Recipient.from_str(key)
        if key.startswith("ssh-ed25519 "):
            return ssh.Recipient.from_str(" ".join(key.split()[:2]))
    except Exception as error:  # pyrage raises its own RecipientError/ValueError
        raise CryptoError(f"invalid recipient {key[:30]!r}...: {error}") from None
    raise CryptoError(f"unsupported recipient {key[:30]!r}: use an age1 key or an ssh-ed25519 key")


def normalize_key(key: str) -> str:
    """The key without a comment ('ssh-ed25519 AAAA...' or 'age1...'), validated."""
    parts = key.split()
    if not parts:
        raise CryptoError("empty key")
    normalized = " ".join(parts[:2]) if parts[0] == "ssh-ed25519" else parts[0]
    recipient_object(normalized)
    return normalized


def encrypt(plaintext: bytes, recipient_keys: list[str]) -> str:
    if not recipient_keys:
        raise CryptoError("no recipients: add a team member first (rave-secrets recipients add)")
    recipients = [recipient_object(key) for key in recipient_keys]
    armored = pyrage.encrypt(plaintext, recipients, armored=True)
    return armored.decode() if isinstance(armored, bytes) else str(armored)


def decrypt(armored: str, identities: list[Any]) -> bytes:
    try:
        return bytes(pyrage.decrypt(armored.encode(), identities))
    except pyrage.DecryptError as error:
        raise CryptoError(
            f"cannot decrypt: none of your identities is a recipient ({error})"
        ) from None


def generate_identity() -> tuple[str, str]:
    """(secret 'AGE-SECRET-KEY-1...', public 'age1...')."""
    identity = x25519.Identity.generate()
    return str(identity), str(identity.to_public())


def identity_text(secret: str, public: str, comment: str) -> str:
    return f"# {comment}\n# public key: {public}\n{secret}\n"


def load_identities(path: Path) -> list[Any]:
    """age identities (AGE-SECRET-KEY-1 lines) or an unencrypted OpenSSH ed25519 private key."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CryptoError(f"cannot read identity {path}: {error.strerror}") from None
    if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data:
        try:
            return [ssh.Identity.from_buffer(data)]
        except Exception as error:
            raise CryptoError(f"{path}: unusable SSH identity ({error})") from None
    identities = []
    for line in data.decode().splitlines():
        line = line.strip()
        if line.startswith("AGE-SECRET-KEY-1"):
            try:
                identities.append(x25519.Identity.from_str(line))
            except Exception as error:
                raise CryptoError(f"{path}: invalid age identity ({error})") from None
    if not identities:
        raise CryptoError(f"{path}: no AGE-SECRET-KEY-1 line and no OpenSSH private key")
    return identities


def public_keys_of(path: Path) -> list[str]:
    """The public keys of an identity file (to check it is a recipient)."""
    keys = []
    for identity in load_identities(path):
        if isinstance(identity, x25519.Identity):
            keys.append(str(identity.to_public()))
    return keys


def ssh_key_tag(key: str) -> str:
    """age's stanza tag of an ssh-ed25519 recipient: base64(SHA-256(wire key)[:4]), no padding."""
    blob = base64.b64decode(key.split()[1])
    return base64.b64encode(hashlib.sha256(blob).digest()[:4]).decode().rstrip("=")


def header_lines(armored: str) -> list[str]:
    """The stanza lines ('-> type args...') of an armored age file, read without any key."""
    text = armored.strip()
    if not (text.startswith(ARMOR_BEGIN) and text.endswith(ARMOR_END)):
        raise CryptoError("not an armored age file")
    body = "".join(text[len(ARMOR_BEGIN) : -len(ARMOR_END)].split())
    try:
        raw = base64.b64decode(body)
    except binascii.Error:
        raise CryptoError("corrupt armor (bad base64)") from None
    header, separator, _ = raw.partition(b"\n--- ")
    if not separator or not header.startswith(b"age-encryption.org/v1\n"):
        raise CryptoError("not an age v1 file")
    return [
        line.decode("ascii", "replace") for line in header.split(b"\n") if line.startswith(b"-> ")
    ]


def ssh_tags_in(armored: str) -> set[str]:
    """Tags of the ssh-ed25519 recipients an armored age file is encrypted to."""
    tags = set()
    for line in header_lines(armored):
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "ssh-ed25519":
            tags.add(parts[2])
    return tags
