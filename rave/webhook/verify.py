"""Signature verification and header checks; pure functions (no I/O), unit-tested directly."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .document import Unstorable, parse

DELIVERY_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
EVENT_NAME = re.compile(r"^[A-Za-z0-9._: -]{1,100}$")
TIMESTAMP = re.compile(r"^[0-9]{1,12}$")  # int() also takes " 1_0 ", "١٢" and 4,000 digits


class Rejected(Exception):
    """A request refused with an HTTP status; `outcome` labels the metrics, `reason` the log."""

    def __init__(self, status: int, outcome: str, reason: str):
        super().__init__(f"{status} {outcome}: {reason}")
        self.status = status
        self.outcome = outcome
        self.reason = reason


def unauthorized(reason: str) -> Rejected:
    return Rejected(401, "unauthorized", reason)


def malformed(reason: str) -> Rejected:
    return Rejected(400, "malformed", reason)


@dataclass(frozen=True)
class ProviderSecrets:
    """The active secrets of each provider; a provider without secrets is not enabled.
    No provider's secret is ever tried for another (a GitHub secret is not a GitLab token)."""

    github: Sequence[bytes] = ()
    standard: Sequence[bytes] = ()
    gitlab: Sequence[bytes] = ()


@dataclass(frozen=True)
class Verified:
    provider: str  # github | gitlab | standard
    delivery_id: str
    event: str
    # sha256 of what the signature covers: the same signed content is stored once, whatever
    # delivery id a replay carries (GitHub's delivery id is not signed)
    content_sha256: bytes


def github_signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_github(body: bytes, header: str | None, secrets: Sequence[bytes]) -> None:
    if not header:
        raise unauthorized("missing X-Hub-Signature-256")
    if not header.startswith("sha256=") or len(header) != 71:
        raise unauthorized("malformed X-Hub-Signature-256")
    given = header.encode("ascii", "replace")
    matched = False
    for secret in secrets:  # every secret is tried: no early exit reveals which one matched
        matched |= hmac.compare_digest(github_signature(secret, body).encode(), given)
    if not matched:
        raise unauthorized("X-Hub-Signature-256 does not match any active secret")


def verify_gitlab(token: str | None, secrets: Sequence[bytes]) -> None:
    if not token:
        raise unauthorized("missing X-Gitlab-Token")
    given = token.encode("utf-8", "replace")
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(secret, given)
    if not matched:
        raise unauthorized("X-Gitlab-Token does not match any active secret")


def standard_key(secret: bytes) -> bytes:
    """Standard Webhooks secrets are `whsec_<base64>`; anything else is used as raw bytes."""
    if secret.startswith(b"whsec_"):
        try:
            return base64.b64decode(secret[6:], validate=True)
        except binascii.Error:
            return secret
    return secret


def standard_signature(secret: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(standard_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify_standard(
    body: bytes,
    msg_id: str | None,
    timestamp: str | None,
    signature: str | None,
    secrets: Sequence[bytes],
    now: float,
    tolerance: int,
) -> None:
    if not signature:
        raise unauthorized("missing webhook-signature")
    if not msg_id or not timestamp:
        raise malformed("missing webhook-id or webhook-timestamp")
    if not TIMESTAMP.match(timestamp):
        raise malformed("webhook-timestamp is not an integer")
    sent = int(timestamp)
    if abs(now - sent) > tolerance:
        raise unauthorized("webhook-timestamp outside the tolerance")
    given = [s.encode("ascii", "replace") for s in signature.split() if s.startswith("v1,")]
    if not given:
        raise unauthorized("no v1 signature in webhook-signature")
    matched = False
    for secret in secrets:
        expected = standard_signature(secret, msg_id, timestamp, body).encode()
        for candidate in given:
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise unauthorized("webhook-signature does not match any active secret")


def _delivery(value: str | None, header: str) -> str:
    if not value:
        raise malformed(f"missing {header}")
    if not DELIVERY_ID.match(value):
        raise malformed(f"malformed {header}")
    return value


def _event(value: str | None, header: str) -> str:
    if not value:
        raise malformed(f"missing {header}")
    if not EVENT_NAME.match(value):
        raise malformed(f"malformed {header}")
    return value


def verify(
    headers: Mapping[str, str],
    body: bytes,
    secrets: ProviderSecrets,
    *,
    now: float,
    tolerance: int = 300,
) -> Verified:
    """Authenticate first (401), then check the delivery headers (400). `headers` lower-case."""
    if "x-hub-signature-256" in headers or "x-github-event" in headers:
        if not secrets.github:
            raise unauthorized("GitHub deliveries are not enabled")
        verify_github(body, headers.get("x-hub-signature-256"), secrets.github)
        return Verified(
            "github",
            _delivery(headers.get("x-github-delivery"), "X-GitHub-Delivery"),
            _event(headers.get("x-github-event"), "X-GitHub-Event"),
            hashlib.sha256(body).digest(),
        )
    if "x-gitlab-token" in headers or "x-gitlab-event" in headers:
        if not secrets.gitlab:
            raise unauthorized("GitLab deliveries are not enabled")
        verify_gitlab(headers.get("x-gitlab-token"), secrets.gitlab)
        delivery = headers.get("x-gitlab-event-uuid") or headers.get("idempotency-key")
        return Verified(
            "gitlab",
            _delivery(delivery, "X-Gitlab-Event-UUID"),
            _event(headers.get("x-gitlab-event"), "X-Gitlab-Event"),
            hashlib.sha256(body).digest(),
        )
    if "webhook-signature" in headers or "webhook-id" in headers:
        if not secrets.standard:
            raise unauthorized("Standard Webhooks deliveries are not enabled")
        msg_id = headers.get("webhook-id")
        timestamp = headers.get("webhook-timestamp")
        verify_standard(
            body,
            msg_id,
            timestamp,
            headers.get("webhook-signature"),
            secrets.standard,
            now,
            tolerance,
        )
        delivery = _delivery(msg_id, "webhook-id")
        signed = f"{delivery}.{timestamp}.".encode() + body
        return Verified("standard", delivery, "", hashlib.sha256(signed).digest())
    raise unauthorized("no signature header")


def parse_json(body: bytes, content_type: str | None) -> object:
    """The body must be JSON that PostgreSQL's jsonb stores as it is (400 otherwise)."""
    if content_type is not None:
        media, _, parameters = content_type.partition(";")
        if media.strip().lower() != "application/json":
            raise malformed("content type is not application/json")
        charset = re.search(r"charset\s*=\s*\"?([^\";\s]+)", parameters, re.IGNORECASE)
        if charset and charset.group(1).lower() not in ("utf-8", "utf8"):
            raise malformed("charset is not utf-8")
    try:
        return parse(body)
    except Unstorable as refused:
        raise malformed(str(refused)) from None
