"""The Starlette application: POST /webhook, GET /metrics, GET /healthz (loopback only)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .config import Config, load_secrets
from .metrics import Metrics
from .spool import Spool, SpoolFull
from .store import Drainer, Event
from .verify import Rejected, malformed, parse_json, verify

log = logging.getLogger("rave_webhook")

RECENT_DELIVERIES = 65536  # answered from memory as duplicates without touching the spool


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(_encode(body), status_code=status, media_type="application/json")


class SecretSource:
    """The active secrets, re-read when the file changes (a rotation needs no restart)."""

    def __init__(self, path: str | None, fixed: list[bytes] | None = None):
        self.path = path
        self.secrets = fixed or []
        self.mtime: float | None = None
        self.checked = 0.0

    def get(self) -> list[bytes]:
        if self.path is None:
            return self.secrets
        now = time.monotonic()
        if now - self.checked >= 1.0 or not self.secrets:
            self.checked = now
            mtime = os.stat(self.path).st_mtime
            if mtime != self.mtime:
                self.secrets = load_secrets(self.path)
                self.mtime = mtime
        return self.secrets


class Receiver:
    def __init__(self, config: Config, secrets: list[bytes] | None = None):
        self.config = config
        self.metrics = Metrics()
        self.secrets = SecretSource(None if secrets else config.hmac_secrets_file, secrets)
        self.spool = Spool(
            config.spool_dir,
            segment_bytes=config.spool_segment_bytes,
            max_bytes=config.spool_max_bytes,
            on_change=self._spool_changed,
        )
        self.drainer = Drainer(
            self.spool,
            config.conninfo,
            batch_size=config.drain_batch,
            on_inserted=self._inserted,
            on_error=self._db_error,
        )
        self.recent: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._task: asyncio.Task[None] | None = None

    # -- callbacks -----------------------------------------------------------------------------
    def _spool_changed(self) -> None:
        self.metrics.spool_depth.set(self.spool.records)
        self.metrics.spool_bytes.set(self.spool.bytes)

    def _inserted(self, new: int, total: int) -> None:
        self.metrics.db_events.labels("inserted").inc(new)
        self.metrics.db_events.labels("duplicate").inc(total - new)
        self.metrics.db_up.set(1)

    def _db_error(self, error: BaseException) -> None:
        self.metrics.db_write_errors.inc()
        self.metrics.db_up.set(0)

    # -- lifecycle -----------------------------------------------------------------------------
    async def startup(self) -> None:
        self.secrets.get()  # fail at start, not at the first delivery, when the file is bad
        self.spool.open()
        self._task = asyncio.get_running_loop().create_task(self.drainer.run())

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.drainer.stop()
        self.spool.close()

    # -- the webhook path: plain ASGI (no Request/Response objects: it is the hot path) --------
    async def webhook(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        try:
            status, body = await self._handle(scope["method"], headers, receive)
            outcome = "duplicate" if status == 200 else "accepted"
            extra: list[tuple[bytes, bytes]] = []
        except Rejected as rejected:
            outcome = rejected.outcome
            status = rejected.status
            body = _encode({"error": rejected.reason})
            extra = [(b"allow", b"POST")] if status == 405 else []
            if status >= 500:
                log.error("refused a delivery: %s", rejected.reason)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        self.metrics.requests.labels(outcome).inc()
        self.metrics.latency.observe(time.perf_counter() - started)

    async def _read_body(self, headers: dict[str, str], receive: Receive) -> bytes:
        limit = self.config.max_body_bytes
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise malformed("invalid Content-Length")
            if int(length) > limit:
                raise Rejected(413, "too_large", f"body over {limit} bytes")
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Rejected(400, "malformed", "client went away before the body was read")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise Rejected(413, "too_large", f"body over {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _handle(
        self, method: str, headers: dict[str, str], receive: Receive
    ) -> tuple[int, bytes]:
        if method != "POST":
            raise Rejected(405, "method", f"method {method} not allowed")
        body = await self._read_body(headers, receive)
        try:
            verified = verify(
                headers,
                body,
                self.secrets.get(),
                now=time.time(),
                tolerance=self.config.timestamp_tolerance_seconds,
                standard_webhooks=self.config.standard_webhooks,
            )
        except Rejected as rejected:
            if rejected.status == 401:
                self.metrics.verification_failures.labels(_provider(headers)).inc()
            raise
        document = parse_json(body, headers.get("content-type"))
        event = verified.event
        if verified.provider == "standard" and isinstance(document, dict):
            event = str(document.get("type", ""))[:100]
        key = (verified.provider, verified.delivery_id)
        if key in self.recent:
            return 200, _encode({"status": "duplicate", "delivery": verified.delivery_id})
        record = Event(verified.provider, verified.delivery_id, event, time.time(), body)
        try:
            await self.spool.append(record.encode())
        except SpoolFull as full:
            raise Rejected(503, "unavailable", f"spool full: {full}") from None
        except OSError as error:
            raise Rejected(503, "unavailable", f"spool write failed: {error}") from None
        self.recent[key] = None
        if len(self.recent) > RECENT_DELIVERIES:
            self.recent.popitem(last=False)
        return 202, _encode({"status": "accepted", "delivery": verified.delivery_id})

    # -- the rest: Starlette ---------------------------------------------------------------------
    async def metrics_endpoint(self, request: Request) -> Response:
        body, content_type = self.metrics.exposition()
        return Response(body, media_type=content_type)

    async def health(self, request: Request) -> Response:
        return _json(
            200,
            {
                "db": self.drainer.db_ok,
                "spool_records": self.spool.records,
                "spool_bytes": self.spool.bytes,
            },
        )


def _provider(headers: Any) -> str:
    if "x-hub-signature-256" in headers or "x-github-event" in headers:
        return "github"
    if "x-gitlab-token" in headers or "x-gitlab-event" in headers:
        return "gitlab"
    if "webhook-signature" in headers or "webhook-id" in headers:
        return "standard"
    return "unknown"


class Application:
    """ASGI entry: /webhook straight to the receiver, everything else (and lifespan) Starlette."""

    def __init__(self, receiver: Receiver):
        self.receiver = receiver
        self.starlette = Starlette(
            routes=[
                Route("/metrics", receiver.metrics_endpoint, methods=["GET"]),
                Route("/healthz", receiver.health, methods=["GET"]),
            ],
            lifespan=receiver.lifespan,
        )
        self.state = self.starlette.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/webhook":
            await self.receiver.webhook(scope, receive, send)
        else:
            await self.starlette(scope, receive, send)


def create_app(config: Config | None = None, secrets: list[bytes] | None = None) -> Application:
    receiver = Receiver(config or Config.load(), secrets)
    return Application(receiver)
