"""Spool records and the PostgreSQL drainer (insert in order, ON CONFLICT DO NOTHING).

A batch PostgreSQL refuses is retried record by record; a record refused on its own (a data or
constraint error, SQLSTATE class 22, 23 or 54) becomes a dead letter and the queue moves on.
Any other failure (connection, server down, permissions) keeps everything in the spool and is
retried. Logs name the SQLSTATE and PostgreSQL's primary message, never the payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .deadletter import DeadLetters, DeadLetterStoreFull
from .spool import Batch, Slot, Spool

log = logging.getLogger("rave_webhook.store")

INSERT = """
INSERT INTO webhook_events (provider, delivery_id, event, received_at, payload, content_sha256)
SELECT provider, delivery_id, event, to_timestamp(received_at), payload::jsonb, content
FROM unnest(%s::text[], %s::text[], %s::text[], %s::float8[], %s::text[], %s::bytea[])
     WITH ORDINALITY AS batch(provider, delivery_id, event, received_at, payload, content, position)
ORDER BY position
ON CONFLICT DO NOTHING
"""
# refused because of the record itself: data exception, integrity violation, program limit
RECORD_ERROR_CLASSES = ("22", "23", "54")


@dataclass(frozen=True)
class Event:
    provider: str
    delivery_id: str
    event: str
    received_at: float
    body: bytes
    content_sha256: bytes | None = None  # None: a record spooled before the column existed

    def encode(self) -> bytes:
        fields: list[object] = [self.provider, self.delivery_id, self.event, self.received_at]
        if self.content_sha256 is not None:
            fields.append(self.content_sha256.hex())
        return json.dumps(fields, separators=(",", ":")).encode() + b"\n" + self.body

    @classmethod
    def decode(cls, payload: bytes) -> Event:
        """ValueError (or a subclass) when the record is not one this module wrote."""
        meta, _, body = payload.partition(b"\n")
        fields = json.loads(meta)
        if not isinstance(fields, list) or len(fields) not in (4, 5):
            raise ValueError("record header is not [provider, delivery, event, time(, sha256)]")
        provider, delivery_id, event, received_at = fields[:4]
        if not all(isinstance(v, str) for v in (provider, delivery_id, event)):
            raise ValueError("record header fields are not strings")
        content = bytes.fromhex(fields[4]) if len(fields) == 5 else None
        body.decode("utf-8")  # the door let only UTF-8 in; anything else is a damaged record
        return cls(provider, delivery_id, event, float(received_at), body, content)


def describe(error: BaseException) -> str:
    """An error for the log: SQLSTATE and primary message, never DETAIL/CONTEXT (payload)."""
    import psycopg

    if isinstance(error, psycopg.Error) and error.sqlstate:
        primary = error.diag.message_primary
        return f"{type(error).__name__} {error.sqlstate}: {primary or 'no message'}"
    # no SQLSTATE: a connection-level failure, whose text is about the connection
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200] if lines else 'no message'}"


def refused_on_its_own(error: BaseException) -> bool:
    import psycopg

    return isinstance(error, psycopg.Error) and (error.sqlstate or "")[:2] in RECORD_ERROR_CLASSES


async def insert_events(conn: Any, events: list[Event]) -> int:
    """Insert in one transaction; returns the number of new rows (duplicates are ignored)."""
    async with conn.transaction():
        cursor = await conn.execute(
            INSERT,
            (
                [e.provider for e in events],
                [e.delivery_id for e in events],
                [e.event for e in events],
                [e.received_at for e in events],
                [e.body.decode() for e in events],
                [e.content_sha256 for e in events],
            ),
        )
        return int(cursor.rowcount)


class Drainer:
    """Moves spooled events to PostgreSQL in order; removes them from the spool after commit."""

    def __init__(
        self,
        spool: Spool,
        conninfo: Callable[[], str],
        dead_letters: DeadLetters,
        batch_size: int = 500,
        on_inserted: Callable[[int, int], None] = lambda new, total: None,
        on_error: Callable[[BaseException], None] = lambda error: None,
        on_dead_letter: Callable[[], None] = lambda: None,
        on_store_full: Callable[[], None] = lambda: None,
        on_reachable: Callable[[], None] = lambda: None,
        max_backoff: float = 5.0,
        probe_seconds: float = 15.0,
    ):
        self.spool = spool
        self.conninfo = conninfo
        self.dead_letters = dead_letters
        self.batch_size = batch_size
        self.on_inserted = on_inserted
        self.on_error = on_error
        self.on_dead_letter = on_dead_letter
        self.on_store_full = on_store_full
        self.on_reachable = on_reachable
        self.max_backoff = max_backoff
        self.probe_seconds = probe_seconds
        self.conn: Any = None
        self.db_ok = False
        self._stopping = False
        # when the drainer last found the spool empty or moved it on (monotonic seconds)
        self.last_progress = time.monotonic()

    async def _connection(self) -> Any:
        import psycopg

        if self.conn is None or self.conn.closed:
            self.conn = await psycopg.AsyncConnection.connect(self.conninfo(), autocommit=True)
        return self.conn

    async def _drop_connection(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):  # already broken
                await self.conn.close()
        self.conn = None
        self.db_ok = False

    async def drain_once(self, source: Slot | Spool) -> int:
        """Drain one batch; returns how many records were committed (0: nothing to do)."""
        batch = source.read_batch(self.batch_size)
        if not batch.payloads:
            if batch.drained_segments or batch.end != source.checkpoint:
                source.commit(batch)  # only skipped a torn tail or emptied old segments
            return 0
        conn = await self._connection()
        try:
            events = [Event.decode(p) for p in batch.payloads]
            new = await insert_events(conn, events)
        except Exception as error:
            if not (isinstance(error, ValueError) or refused_on_its_own(error)):
                raise  # the database, not a record: keep the batch and retry it whole
            new = await self._one_by_one(conn, batch)
        self.db_ok = True
        source.commit(batch)
        self.last_progress = time.monotonic()
        self.on_inserted(new, len(batch.payloads))
        return len(batch.payloads)

    async def _one_by_one(self, conn: Any, batch: Batch) -> int:
        """Insert each record alone; dead-letter those refused on their own. Raises (keeping
        the batch in the spool) on any other error or when the dead-letter store is full."""
        new = 0
        for payload in batch.payloads:
            try:
                event = Event.decode(payload)
            except ValueError as error:
                self._bury(payload, None, "undecodable spool record", None)
                log.error("dead-lettered an undecodable spool record: %s", type(error).__name__)
                continue
            try:
                new += await insert_events(conn, [event])
            except Exception as error:
                if not refused_on_its_own(error):
                    raise
                self._bury(payload, event, describe(error), getattr(error, "sqlstate", None))
                log.error(
                    "dead-lettered %s delivery %s: %s",
                    event.provider,
                    event.delivery_id,
                    describe(error),
                )
        return new

    def _bury(self, payload: bytes, event: Event | None, reason: str, sqlstate: str | None) -> None:
        header: dict[str, object] = {"reason": reason, "sqlstate": sqlstate, "dead_at": time.time()}
        if event is not None:
            header.update(
                provider=event.provider,
                delivery_id=event.delivery_id,
                event=event.event,
                received_at=event.received_at,
            )
        self.dead_letters.add(payload, header)  # DeadLetterStoreFull: the batch stays spooled
        self.on_dead_letter()

    async def probe(self) -> None:
        """An idle receiver still learns whether PostgreSQL answers: without it the database
        gauge kept its start value (down) until the first delivery, and a quiet host raised
        WebhookDatabaseWritesFailing."""
        conn = await self._connection()
        await conn.execute("SELECT 1")
        self.db_ok = True
        self.on_reachable()

    def stalled_seconds(self) -> float:
        """How long records have waited without the drainer moving the spool on (0: empty)."""
        if self.spool.records <= 0:
            self.last_progress = time.monotonic()
            return 0.0
        return max(0.0, time.monotonic() - self.last_progress)

    async def drain_orphans(self) -> None:
        for slot in self.spool.orphan_slots():
            try:
                while await self.drain_once(slot):
                    pass
                self._remove_if_empty(slot)
            finally:
                slot.release()

    @staticmethod
    def _remove_if_empty(slot: Slot) -> None:
        if not any(p.name.endswith(".seg") for p in slot.directory.iterdir()):
            log.info("orphan spool slot %s drained", slot.directory)

    async def run(self) -> None:
        backoff = 0.1
        orphan_check = 0.0
        next_probe = 0.0
        loop = asyncio.get_running_loop()
        while not self._stopping:
            try:
                if loop.time() >= orphan_check:
                    await self.drain_orphans()
                    orphan_check = loop.time() + 30.0
                self.spool.appended.clear()
                drained = await self.drain_once(self.spool)
                backoff = 0.1
                if not drained and loop.time() >= next_probe:
                    await self.probe()
                    next_probe = loop.time() + self.probe_seconds
                elif drained:
                    next_probe = loop.time() + self.probe_seconds  # the drain itself proved it
                if not drained:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.spool.appended.wait(), timeout=1.0)
            except asyncio.CancelledError:
                raise
            except DeadLetterStoreFull as full:  # PostgreSQL is fine: the operator must act
                self.on_store_full()
                log.error("dead-letter store full (%s): the drain waits at a refused record", full)
                await asyncio.sleep(self.max_backoff)
            except Exception as error:  # PostgreSQL down, network, ...: keep the spool, retry
                self.on_error(error)
                log.warning(
                    "draining to PostgreSQL failed (%s); retrying in %.1fs",
                    describe(error),
                    backoff,
                )
                await self._drop_connection()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)

    async def stop(self) -> None:
        self._stopping = True
        await self._drop_connection()
