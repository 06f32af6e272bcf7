"""New secret values, generated in memory (openssl reads and writes through pipes only)."""

from __future__ import annotations

import base64
import ipaddress
import secrets as random
import shutil
import subprocess

CCR_UI_USER = "rave"
CERT_DAYS = 825


class GenerateError(Exception):
    pass


def password() -> str:
    return random.token_urlsafe(24)  # 32 characters, 192 bits


def hmac_secret() -> str:
    return random.token_hex(32)  # 64 characters, 256 bits


def standard_webhooks_secret() -> str:
    """The Standard Webhooks form: whsec_ and the base64 of a 256-bit key."""
    return "whsec_" + base64.b64encode(random.token_bytes(32)).decode()


def _openssl(args: list[str], stdin: bytes = b"") -> bytes:
    if shutil.which("openssl") is None:
        raise GenerateError("openssl not found on the control machine (apt install openssl)")
    result = subprocess.run(
        ["openssl", *args], input=stdin, capture_output=True, check=False, timeout=60
    )
    if result.returncode != 0:
        raise GenerateError(f"openssl {args[0]} failed: {result.stderr.decode().strip()}")
    return result.stdout


def htpasswd_line(password_value: str, user: str = CCR_UI_USER) -> str:
    """An apr1 (MD5-crypt) htpasswd line, which nginx's auth_basic_user_file accepts."""
    hashed = _openssl(["passwd", "-apr1", "-stdin"], password_value.encode()).decode().strip()
    return f"{user}:{hashed}"


def _san(names: list[str]) -> str:
    entries = []
    for name in names:
        try:
            ipaddress.ip_address(name)
            entries.append(f"IP:{name}")
        except ValueError:
            entries.append(f"DNS:{name}")
    return ",".join(entries)


def self_signed(names: list[str]) -> tuple[str, str]:
    """(certificate PEM, private key PEM): P-256, for the given host names and addresses."""
    if not names:
        raise GenerateError("a certificate needs at least one name")
    key = _openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])
    cert = _openssl(
        [
            "req",
            "-x509",
            "-new",
            "-key",
            "/dev/stdin",
            "-subj",
            f"/CN={names[0]}",
            "-days",
            str(CERT_DAYS),
            "-addext",
            f"subjectAltName={_san(names)}",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "extendedKeyUsage=serverAuth",
        ],
        key,
    )
    return cert.decode(), key.decode()


def certificate_names(certificate: str) -> list[str]:
    """The subjectAltName entries (DNS names and IP addresses) of a PEM certificate."""
    out = _openssl(["x509", "-noout", "-ext", "subjectAltName"], certificate.encode()).decode()
    names = []
    for line in out.splitlines()[1:]:
        for entry in line.split(","):
            _, _, value = entry.strip().partition(":")
            if value:
                names.append(value.strip())
    return names


def certificate_valid_days(certificate: str, days: int) -> bool:
    """Does the certificate stay valid for the next `days` days?"""
    result = subprocess.run(
        ["openssl", "x509", "-noout", "-checkend", str(days * 86400)],
        input=certificate.encode(),
        capture_output=True,
        check=False,
        timeout=60,
    )
    return result.returncode == 0
