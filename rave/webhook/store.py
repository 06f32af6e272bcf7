"""Spool records and the PostgreSQL drainer (insert in order, ON CONFLICT DO NOTHING)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .spool import Slot, Spool

log = logging.getLogger("rave_webhook.store")

INSERT = """
INSERT INTO webhook_events (provider, delivery_id, event, received_at, payload)
SELECT provider, delivery_id, event, to_timestamp(received_at), payload::jsonb
FROM unnest(%s::text[], %s::text[], %s::text[], %s::float8[], %s::text[])
     WITH ORDINALITY AS batch(provider, delivery_id, event, received_at, payload, position)
ORDER BY position
ON CONFLICT (provider, delivery_id) DO NOTHING
"""


@dataclass(frozen=True)
class Event:
    provider: str
    delivery_id: str
    event: str
    received_at: float
    body: bytes

    def encode(self) -> bytes:
        meta = json.dumps(
            [self.provider, self.delivery_id, self.event, self.received_at], separators=(",", ":")
        )
        return meta.encode() + b"\n" + self.body

    @classmethod
    def decode(cls, payload: bytes) -> Event:
        meta, _, body = payload.partition(b"\n")
        provider, delivery_id, event, received_at = json.loads(meta)
        return cls(provider, delivery_id, event, float(received_at), body)


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
            ),
        )
        return int(cursor.rowcount)


class Drainer:
    """Moves spooled events to PostgreSQL in order; removes them from the spool after commit."""

    def __init__(
        self,
        spool: Spool,
        conninfo: Callable[[], str],
        batch_size: int = 500,
        on_inserted: Callable[[int, int], None] = lambda new, total: None,
        on_error: Callable[[BaseException], None] = lambda error: None,
        max_backoff: float = 5.0,
    ):
        self.spool = spool
        self.conninfo = conninfo
        self.batch_size = batch_size
        self.on_inserted = on_inserted
        self.on_error = on_error
        self.max_backoff = max_backoff
        self.conn: Any = None
        self.db_ok = False
        self._stopping = False

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
        events = [Event.decode(p) for p in batch.payloads]
        conn = await self._connection()
        new = await insert_events(conn, events)
        self.db_ok = True
        source.commit(batch)
        self.on_inserted(new, len(events))
        return len(events)

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
        loop = asyncio.get_running_loop()
        while not self._stopping:
            try:
                if loop.time() >= orphan_check:
                    await self.drain_orphans()
                    orphan_check = loop.time() + 30.0
                self.spool.appended.clear()
                drained = await self.drain_once(self.spool)
                backoff = 0.1
                if not drained:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.spool.appended.wait(), timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # PostgreSQL down, network, ...: keep the spool, retry
                self.on_error(error)
                log.warning("draining to PostgreSQL failed (%s); retrying in %.1fs", error, backoff)
                await self._drop_connection()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)

    async def stop(self) -> None:
        self._stopping = True
        await self._drop_connection()
