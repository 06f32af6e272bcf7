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

from .config import Config, load_secrets
from .metrics import Metrics
from .spool import Spool, SpoolFull
from .store import Drainer, Event
from .verify import Rejected, malformed, parse_json, verify

log = logging.getLogger("rave_webhook")

RECENT_DELIVERIES = 65536  # answered from memory as duplicates without touching the spool


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")).encode() + b"\n",
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


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

    # -- handlers ------------------------------------------------------------------------------
    async def webhook(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            response = await self._handle(request)
            outcome = "duplicate" if response.status_code == 200 else "accepted"
        except Rejected as rejected:
            outcome = rejected.outcome
            headers = {"Allow": "POST"} if rejected.status == 405 else None
            response = _json(rejected.status, {"error": rejected.reason}, headers)
            if rejected.status >= 500:
                log.error("refused a delivery: %s", rejected.reason)
        self.metrics.requests.labels(outcome).inc()
        self.metrics.latency.observe(time.perf_counter() - started)
        return response

    async def _read_body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise malformed("invalid Content-Length")
            if int(length) > limit:
                raise Rejected(413, "too_large", f"body over {limit} bytes")
        chunks = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise Rejected(413, "too_large", f"body over {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _handle(self, request: Request) -> Response:
        if request.method != "POST":
            raise Rejected(405, "method", f"method {request.method} not allowed")
        body = await self._read_body(request)
        headers = request.headers
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
            return _json(200, {"status": "duplicate", "delivery": verified.delivery_id})
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
        return _json(202, {"status": "accepted", "delivery": verified.delivery_id})

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


def create_app(config: Config | None = None, secrets: list[bytes] | None = None) -> Starlette:
    receiver = Receiver(config or Config.load(), secrets)
    app = Starlette(
        routes=[
            Route(
                "/webhook",
                receiver.webhook,
                methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            ),
            Route("/metrics", receiver.metrics_endpoint, methods=["GET"]),
            Route("/healthz", receiver.health, methods=["GET"]),
        ],
        lifespan=receiver.lifespan,
    )
    app.state.receiver = receiver
    return app
