"""Debug mode of the receiver: it says what happened to each delivery, and never a secret, a
signature, a token or a byte of the body (the host test checks the journal of the real unit)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from hypothesis import given
from hypothesis import strategies as st

from rave.webhook.__main__ import configure_logging, server_options
from rave.webhook.app import create_app
from rave.webhook.config import Config
from tests.unit.webhook_strategies import property_settings
from tests.unit.webhook_support import Cluster, app_config, github_headers, wait_until

SECRET = b"debug-log-test-hmac-secret-5f0c"
PROPERTY = property_settings("RAVE_HYPOTHESIS_HTTP_EXAMPLES", 60)
LOGGERS = ("rave_webhook", "uvicorn", "uvicorn.error", "uvicorn.access")


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self.guard:
            self.lines.append(self.format(record))

    def text(self) -> str:
        with self.guard:
            return "\n".join(self.lines)


@pytest.fixture(scope="module")
def debug_server(
    pg: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Records]]:
    """The app under uvicorn with the options and logging of the unit in debug mode."""
    spool = tmp_path_factory.mktemp("debug-spool")
    config = app_config(pg, spool / "spool", dead_letter_dir=str(spool / "deadletter"), debug=True)
    configure_logging(config)
    options = {k: v for k, v in server_options(config).items() if k != "workers"}
    server = uvicorn.Server(uvicorn.Config(create_app(config, [SECRET]), lifespan="on", **options))
    records = Records()  # after uvicorn.Config: it replaces uvicorn's handlers
    for name in LOGGERS:
        logging.getLogger(name).addHandler(records)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started)
    try:
        yield f"http://127.0.0.1:{config.listen_port}/webhook", records
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(records)
        ours = logging.getLogger("rave_webhook")
        for handler in list(ours.handlers):
            if isinstance(handler, logging.StreamHandler) and handler is not records:
                ours.removeHandler(handler)
        ours.setLevel(logging.NOTSET)


def test_debug_mode_is_off_unless_configured() -> None:
    assert Config().debug is False
    assert server_options(Config())["log_level"] == "info"
    assert server_options(Config())["access_log"] is False
    assert server_options(Config(debug=True))["log_level"] == "debug"  # never "trace"


def test_debug_lines_say_what_happened(debug_server: tuple[str, Records]) -> None:
    url, records = debug_server
    body = json.dumps({"debug": str(uuid.uuid4())}).encode()
    headers = github_headers(SECRET, body)
    assert httpx.post(url, content=body, headers=headers).status_code == 202
    assert httpx.post(url, content=body, headers=headers).status_code == 200
    delivery = headers["X-GitHub-Delivery"]
    wait_until(lambda: "drained" in records.text())
    text = records.text()
    assert f"accepted github delivery '{delivery}'" in text
    assert f"duplicate github delivery '{delivery}'" in text
    assert '"POST /webhook HTTP/1.1" 202' in text  # uvicorn's access line


@PROPERTY
@given(
    canary=st.text(max_size=40),
    variant=st.sampled_from(["signed", "wrong secret", "gitlab token", "standard", "bad json"]),
)
def test_no_secret_signature_token_or_body_in_the_debug_logs(
    debug_server: tuple[str, Records], canary: str, variant: str
) -> None:
    url, records = debug_server
    marker = f"canary-{uuid.uuid4().hex}"
    password = f"pw-{marker}-{canary}"
    body = json.dumps({"password": password, "marker": marker}, ensure_ascii=False).encode()
    if variant == "bad json":
        body = b'{"marker": "' + marker.encode() + b'", NaN}'
    secret = SECRET if variant in ("signed", "bad json") else f"{marker}-wrong".encode()
    headers = github_headers(secret, body)
    if variant == "gitlab token":
        headers = {"Content-Type": "application/json", "X-Gitlab-Token": f"{marker}-token"}
    elif variant == "standard":
        timestamp = str(int(time.time()))
        digest = hmac.new(secret, f"{marker}.{timestamp}.".encode() + body, hashlib.sha256)
        headers = {
            "Content-Type": "application/json",
            "webhook-id": marker,
            "webhook-timestamp": timestamp,
            "webhook-signature": "v1," + digest.hexdigest(),
        }
    before = len(records.lines)
    answer = httpx.post(url, content=body, headers=headers)
    assert answer.status_code in (202, 400, 401), answer.text
    wait_until(lambda: len(records.lines) > before)  # at least the access line
    text = records.text()
    assert SECRET.decode() not in text
    assert marker not in text and password not in text
    for name, value in headers.items():
        if name in ("X-Hub-Signature-256", "X-Gitlab-Token", "webhook-signature"):
            assert value not in text, name


def test_the_unit_config_json_carries_the_setting(tmp_path: Path) -> None:
    from tasks.webhook import app_config as unit_config
    from tests.unit.conftest import make_settings

    for debug in (False, True):
        path = tmp_path / f"config-{debug}.json"
        path.write_text(json.dumps(unit_config(make_settings(debug_mode=debug))))
        assert Config.load(str(path)).debug is debug
