"""Helpers of the edge/webhook/database host tests: the staging secrets, HTTPS from the control
machine to the instance's own staging host, SQL on the host."""

from __future__ import annotations

import hashlib
import hmac
import json
import shlex
import ssl
import time
import uuid
from typing import Any

import httpx

from rave.secrets import crypto
from rave.secrets.model import SecretsModel
from rave.secrets.store import STAGING_IDENTITY, Environment

PORT = 3002


def values(staging: Any) -> SecretsModel:
    """The staging secrets, decrypted on the control machine (read fresh: tests rotate them)."""
    state = staging.instance.state
    identities = crypto.load_identities(state / STAGING_IDENTITY)
    return Environment.named("staging", state / "secrets").decrypt(identities)


def hmac_secret(staging: Any) -> bytes:
    return values(staging).webhook_hmac_secrets[0].encode()


def base_url(staging: Any) -> str:
    return f"https://{staging.address(staging.names[0])}:{PORT}"


def client(staging: Any) -> httpx.Client:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the staging certificate is self-signed
    return httpx.Client(base_url=base_url(staging), verify=context, timeout=30)


def github(secret: bytes, body: bytes, delivery: str | None = None) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest(),
    }


def sql(host: Any, query: str, database: str = "rave_webhook") -> str:
    """Run SQL as the postgres superuser on the host (peer authentication), return rows."""
    command = f"cd / && runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d {database} -f -"
    result = host.run(f"echo {shlex.quote(query)} | ({command})")
    assert result.rc == 0, result.stderr
    return str(result.stdout).strip()


def rows_for(host: Any, delivery: str) -> int:
    return int(sql(host, f"SELECT count(*) FROM webhook_events WHERE delivery_id = '{delivery}'"))


def health(host: Any) -> dict[str, Any]:
    return dict(json.loads(host.check_output("curl -sf http://127.0.0.1:8001/healthz")))


def wait_for(predicate: Any, timeout: float = 60.0, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)
