import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from rave.settings import HostSettings

SAMPLE_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEEXAMPLEEXAMPLEEXAMPLEEXAMPLEEXAMPLEx ops@example"
)


def make_settings(**overrides) -> HostSettings:
    data = {"hostname": "rave-test-1", "operator_keys": [SAMPLE_KEY], **overrides}
    return HostSettings.model_validate(data)


@pytest.fixture
def sample_settings() -> HostSettings:
    return make_settings(egress_proxy="http://10.0.0.1:3128")


@pytest.fixture
def healthz() -> Iterator[tuple[str, dict[str, Any]]]:
    """A stand-in for the webhook receiver's GET /healthz on loopback: (its URL, the JSON it
    answers, changeable by the test; None answers 503 without JSON)."""
    answer: dict[str, Any] = {
        "body": {
            "db": True,
            "spool_records": 0,
            "spool_bytes": 0,
            "stalled_seconds": 0,
            "dead_letters": 0,
            "dead_letter_store_full": False,
        }
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = answer["body"]
            data = b"not json" if body is None else json.dumps(body).encode()
            self.send_response(200 if body is not None else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/healthz", answer
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def _restore_the_umask():
    """Host programs run in-process (rave-secrets-install sets 077) must not leave their umask
    to later tests, or to a staging host set up in the same pytest process."""
    before = os.umask(0o022)
    os.umask(before)
    yield
    os.umask(before)


@pytest.fixture(scope="module")
def pg():
    """A private PostgreSQL 15 cluster per test module (tests/unit/webhook_support.py)."""
    from tests.unit.webhook_support import cluster

    with cluster() as running:
        yield running
