"""The Starlette application: POST /webhook, GET /metrics, GET /healthz (loopback only)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
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
from .deadletter import DeadLetters
from .metrics import Metrics
from .spool import Spool, SpoolFull
from .store import Drainer, Event
from .verify import ProviderSecrets, Rejected, malformed, parse_json, verify

log = logging.getLogger("rave_webhook")

RECENT_DELIVERIES = 65536  # answered from memory as duplicates without touching the spool
CONTENT_LENGTH = re.compile(r"^[0-9]{1,15}$")  # str.isdigit() also takes "²" (int() then fails)


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(_encode(body), status_code=status, media_type="application/json")


class SecretSource:
    """One provider's active secrets, re-read when the file changes (a rotation needs no
    restart). A file that goes missing or bad mid-rotation keeps the last good secrets."""

    def __init__(self, path: str | None, fixed: list[bytes] | None = None, optional: bool = False):
        self.path = path
        self.optional = optional
        self.secrets: list[bytes] = list(fixed or [])
        self.mtime: float | None = None
        self.checked = 0.0
        self.loaded = path is None

    def get(self) -> list[bytes]:
        if self.path is None:
            return self.secrets
        now = time.monotonic()
        if now - self.checked >= 1.0 or not self.loaded:
            self.checked = now
            try:
                mtime = os.stat(self.path).st_mtime
                if mtime != self.mtime:
                    self.secrets = load_secrets(self.path, allow_empty=self.optional)
                    self.mtime = mtime
                    self.loaded = True
            except (OSError, ValueError) as error:
                if not self.loaded:
                    raise  # at start-up: fail loudly rather than run without secrets
                log.error(
                    "secrets file %s unreadable, keeping the last good one: %s",
                    self.path,
                    type(error).__name__,
                )
        return self.secrets


class ProviderSources:
    def __init__(self, config: Config, fixed: ProviderSecrets | None):
        if fixed is not None:
            self.github = SecretSource(None, list(fixed.github))
            self.standard = SecretSource(None, list(fixed.standard))
            self.gitlab = SecretSource(None, list(fixed.gitlab))
        else:
            self.github = SecretSource(config.hmac_secrets_file)
            self.standard = SecretSource(config.standard_secrets_file, optional=True)
            self.gitlab = SecretSource(config.gitlab_tokens_file, optional=True)
        self.standard_enabled = config.standard_webhooks
        self.gitlab_enabled = config.gitlab

    def get(self) -> ProviderSecrets:
        return ProviderSecrets(
            github=self.github.get(),
            standard=self.standard.get() if self.standard_enabled else (),
            gitlab=self.gitlab.get() if self.gitlab_enabled else (),
        )

    def check_disjoint(self) -> None:
        """No secret of one provider is another's: a GitHub secret never works as a token."""
        current = self.get()
        seen: dict[bytes, str] = {}
        for provider in ("github", "standard", "gitlab"):
            for secret in getattr(current, provider):
                if seen.setdefault(secret, provider) != provider:
                    raise ValueError(f"a {provider} secret is also a {seen[secret]} secret")


class Receiver:
    def __init__(self, config: Config, secrets: ProviderSecrets | list[bytes] | None = None):
        self.config = config
        self.metrics = Metrics()
        if isinstance(secrets, list):  # tests: GitHub only
            secrets = ProviderSecrets(github=secrets)
        self.secrets = ProviderSources(config, secrets)
        self.dead_letters = DeadLetters(
            config.dead_letter_dir,
            max_count=config.dead_letter_max_count,
            max_bytes=config.dead_letter_max_bytes,
        )
        self.spool = Spool(
            config.spool_dir,
            segment_bytes=config.spool_segment_bytes,
            max_bytes=config.spool_max_bytes,
            on_change=self._spool_changed,
        )
        self.drainer = Drainer(
            self.spool,
            config.conninfo,
            dead_letters=self.dead_letters,
            batch_size=config.drain_batch,
            on_inserted=self._inserted,
            on_error=self._db_error,
            on_dead_letter=self._dead_letter,
            on_store_full=self._dead_letters_changed,
            on_reachable=lambda: self.metrics.db_up.set(1),
        )
        # (provider, "id", delivery id) and (provider, "content", sha256 hex)
        self.recent: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None

    # -- callbacks -----------------------------------------------------------------------------
    def _spool_changed(self) -> None:
        self.metrics.spool_depth.set(self.spool.records)
        self.metrics.spool_bytes.set(self.spool.bytes)

    def _inserted(self, new: int, total: int) -> None:
        self.metrics.db_events.labels("inserted").inc(new)
        self.metrics.db_events.labels("duplicate").inc(total - new)
        self.metrics.db_up.set(1)
        log.debug("drained %d deliveries into PostgreSQL (%d new)", total, new)

    def _db_error(self, error: BaseException) -> None:
        self.metrics.db_write_errors.inc()
        self.metrics.db_up.set(0)
        self._dead_letters_changed()

    def _dead_letter(self) -> None:
        self.metrics.dead_lettered.inc()
        self._dead_letters_changed()

    def _dead_letters_changed(self) -> None:
        self.metrics.dead_letters.set(self.dead_letters.count)
        self.metrics.dead_letter_bytes.set(self.dead_letters.bytes)
        self.metrics.dead_letter_store_full.set(1 if self.dead_letters.full else 0)

    async def _watch(self) -> None:
        """Keeps the gauges that age (stalled seconds, letters an operator removed) current."""
        while True:
            self.metrics.spool_stalled.set(self.drainer.stalled_seconds())
            self.dead_letters.rescan()
            self._dead_letters_changed()
            await asyncio.sleep(5.0)

    # -- lifecycle -----------------------------------------------------------------------------
    async def startup(self) -> None:
        self.secrets.get()  # fail at start, not at the first delivery, when a file is bad
        self.secrets.check_disjoint()
        self.dead_letters.open()
        self.spool.open()
        self._dead_letters_changed()
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self.drainer.run())
        self._watcher = loop.create_task(self._watch())

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        for task in (self._task, self._watcher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
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
            else:  # the reasons name headers, never their values (rave_webhook/verify.py)
                log.debug(
                    "refused a %s delivery: %d %s", _provider(headers), status, rejected.reason
                )
        except Exception as error:  # never a 500: a bug here must not read as "try elsewhere"
            log.exception("unexpected %s handling a delivery", type(error).__name__)
            outcome, status, extra = "unavailable", 503, []
            body = _encode({"error": "internal error; retry later"})
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
            if not CONTENT_LENGTH.match(length):
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
            )
        except Rejected as rejected:
            if rejected.status == 401:
                self.metrics.verification_failures.labels(_provider(headers)).inc()
            raise
        document = parse_json(body, headers.get("content-type"))
        event = verified.event
        if verified.provider == "standard" and isinstance(document, dict):
            event = str(document.get("type", ""))[:100]
        keys = (
            (verified.provider, "id", verified.delivery_id),
            (verified.provider, "content", verified.content_sha256.hex()),
        )
        if any(key in self.recent for key in keys):
            log.debug("duplicate %s delivery %r", verified.provider, verified.delivery_id)
            return 200, _encode({"status": "duplicate", "delivery": verified.delivery_id})
        record = Event(
            verified.provider,
            verified.delivery_id,
            event,
            time.time(),
            body,
            verified.content_sha256,
        )
        try:
            await self.spool.append(record.encode())
        except SpoolFull as full:
            raise Rejected(503, "unavailable", f"spool full: {full}") from None
        except OSError as error:
            raise Rejected(503, "unavailable", f"spool write failed: {error}") from None
        for key in keys:
            self.recent[key] = None
        while len(self.recent) > 2 * RECENT_DELIVERIES:
            self.recent.popitem(last=False)
        if log.isEnabledFor(logging.DEBUG):  # the hot path: no formatting work unless on
            log.debug(
                "accepted %s delivery %r (event %r, %d bytes, sha256 %s)",
                verified.provider,
                verified.delivery_id,
                event,
                len(body),
                verified.content_sha256.hex()[:16],
            )
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
                "stalled_seconds": round(self.drainer.stalled_seconds(), 1),
                "dead_letters": self.dead_letters.count,
                "dead_letter_store_full": self.dead_letters.full,
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


def create_app(
    config: Config | None = None, secrets: ProviderSecrets | list[bytes] | None = None
) -> Application:
    receiver = Receiver(config or Config.load(), secrets)
    return Application(receiver)
