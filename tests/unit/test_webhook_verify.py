"""Signature verification and request checks of the webhook receiver (pure functions)."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from rave.webhook.verify import (
    ProviderSecrets,
    Rejected,
    github_signature,
    parse_json,
    standard_signature,
    verify,
    verify_github,
)

SECRET = b"It's a Secret to Everybody"
NOW = 1_700_000_000.0


def test_github_documented_test_vector() -> None:
    # https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert github_signature(SECRET, b"Hello, World!") == expected
    verify_github(b"Hello, World!", expected, [SECRET])
    with pytest.raises(Rejected) as caught:
        verify_github(b"Hello, World?", expected, [SECRET])
    assert caught.value.status == 401


def _github(body: bytes, secret: bytes = SECRET, **extra: str) -> dict[str, str]:
    headers = {
        "x-github-event": "push",
        "x-github-delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "x-hub-signature-256": github_signature(secret, body),
    }
    headers.update(extra)
    return {k: v for k, v in headers.items() if v}


def everyone(secrets: list[bytes]) -> ProviderSecrets:
    return ProviderSecrets(github=secrets, standard=secrets, gitlab=secrets)


def status_of(
    headers: dict[str, str], body: bytes, secrets: list[bytes] | ProviderSecrets | None = None
) -> int:
    if not isinstance(secrets, ProviderSecrets):
        secrets = everyone(secrets or [SECRET])
    try:
        verify(headers, body, secrets, now=NOW)
    except Rejected as rejected:
        return rejected.status
    return 202


def test_github_accepted_with_any_active_secret() -> None:
    body = b'{"zen": "Design for failure."}'
    old, new = b"old-secret", b"new-secret"
    assert status_of(_github(body, new), body, [old, new]) == 202
    assert status_of(_github(body, old), body, [old, new]) == 202
    verified = verify(_github(body, new), body, everyone([old, new]), now=NOW)
    assert (verified.provider, verified.event) == ("github", "push")
    assert verified.delivery_id == "72d3162e-cc78-11e3-81ab-4c9367dc0958"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (_github(b"{}", b"forged"), 401),  # signed with another secret
        (_github(b"{}", **{"x-hub-signature-256": ""}), 401),  # missing signature
        (_github(b"{}", **{"x-hub-signature-256": "sha1=" + "0" * 40}), 401),
        (_github(b"{}", **{"x-hub-signature-256": "sha256=zz"}), 401),
        (_github(b"{}", **{"x-github-delivery": ""}), 400),  # missing delivery id
        (_github(b"{}", **{"x-github-delivery": "a b;c"}), 400),
        (_github(b"{}", **{"x-github-event": ""}), 400),  # authenticated, event header missing
        ({}, 401),  # nothing at all
    ],
)
def test_github_refusals(headers: dict[str, str], expected: int) -> None:
    assert status_of(headers, b"{}") == expected


def test_signature_over_the_raw_body() -> None:
    body = b'{"a": 1}'
    assert status_of(_github(body), b'{"a":1}') == 401


def test_gitlab_token() -> None:
    headers = {
        "x-gitlab-event": "Push Hook",
        "x-gitlab-token": SECRET.decode(),
        "x-gitlab-event-uuid": "13792a34-cac6-4fda-95a8-c58e00a3954e",
    }
    assert status_of(headers, b"{}") == 202
    assert status_of({**headers, "x-gitlab-token": "wrong"}, b"{}") == 401
    assert status_of({k: v for k, v in headers.items() if k != "x-gitlab-token"}, b"{}") == 401
    assert status_of({k: v for k, v in headers.items() if k != "x-gitlab-event-uuid"}, b"{}") == 400


def test_standard_webhooks() -> None:
    key = b"test-key-32-bytes-long-xxxxxxxxx"
    secret = b"whsec_" + base64.b64encode(key)
    body = b'{"type": "invoice.paid"}'
    timestamp = str(int(NOW))
    # the specification's construction, computed independently here
    expected = base64.b64encode(
        hmac.new(key, b"msg_1." + timestamp.encode() + b"." + body, hashlib.sha256).digest()
    ).decode()
    assert standard_signature(secret, "msg_1", timestamp, body) == "v1," + expected
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": timestamp,
        "webhook-signature": "v1,bm90LXRoZS1zaWduYXR1cmU= v1," + expected,
    }
    assert status_of(headers, body, [secret]) == 202
    assert status_of({**headers, "webhook-signature": "v1," + "A" * 44}, body, [secret]) == 401
    stale = str(int(NOW) - 3600)
    stale_sig = standard_signature(secret, "msg_1", stale, body)
    assert (
        status_of(
            {**headers, "webhook-timestamp": stale, "webhook-signature": stale_sig}, body, [secret]
        )
        == 401
    )
    assert status_of({**headers, "webhook-timestamp": "soon"}, body, [secret]) == 400
    assert (
        status_of({**headers, "webhook-timestamp": "\u0661\u0667" + "\u0660" * 8}, body, [secret])
        == 400
    )
    assert status_of({**headers, "webhook-timestamp": "1" + "0" * 400}, body, [secret]) == 400
    assert status_of(headers, body, ProviderSecrets(github=[secret])) == 401  # not enabled


def test_each_provider_only_with_its_own_secrets() -> None:
    github_secret, token = b"g" * 40, b"t" * 40
    secrets = ProviderSecrets(github=[github_secret], gitlab=[token])
    body = b"{}"
    gitlab = {
        "x-gitlab-event": "Push Hook",
        "x-gitlab-event-uuid": "13792a34-cac6-4fda-95a8-c58e00a3954e",
    }
    assert status_of({**gitlab, "x-gitlab-token": token.decode()}, body, secrets) == 202
    # the GitHub secret is never a GitLab token, and GitLab is off without tokens
    assert status_of({**gitlab, "x-gitlab-token": github_secret.decode()}, body, secrets) == 401
    off = ProviderSecrets(github=[github_secret])
    assert status_of({**gitlab, "x-gitlab-token": token.decode()}, body, off) == 401
    # a token is never a GitHub secret
    assert status_of(_github(body, token), body, secrets) == 401
    assert status_of(_github(body, github_secret), body, secrets) == 202


def test_the_content_hash_covers_what_is_signed() -> None:
    body = b'{"zen": "x"}'
    first = verify(_github(body), body, everyone([SECRET]), now=NOW)
    replay = verify(
        _github(body, **{"x-github-delivery": "another-id"}), body, everyone([SECRET]), now=NOW
    )
    assert first.delivery_id != replay.delivery_id
    assert first.content_sha256 == replay.content_sha256 == hashlib.sha256(body).digest()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"\xff\xfe", None),
        (b'{"a": "\\u0000"}', "application/json"),
        (b"payload=%7B%7D", "application/x-www-form-urlencoded"),
        (b"{}", "application/json; charset=utf-16"),
        (b'{"a": NaN}', "application/json"),
        (b'{"a": Infinity}', None),
        (b"\xef\xbb\xbf{}", None),
        ('{"a": 1}'.encode("utf-16"), None),
        (b'["\\ud800"]', None),
        (b'{"\\u0000": 1}', None),
        (b"[1e131072]", None),
        (b"[1.5e-16383]", None),
        (b"[" * 100_000 + b"]" * 100_000, None),
        (b"", None),
    ],
)
def test_malformed_bodies(body: bytes, content_type: str | None) -> None:
    with pytest.raises(Rejected) as caught:
        parse_json(body, content_type)
    assert caught.value.status == 400


def test_json_accepted() -> None:
    assert parse_json(b'{"a": [1, 2]}', "application/json; charset=utf-8") == {"a": [1, 2]}
