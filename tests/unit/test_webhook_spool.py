"""The durable spool: framing, group commit, crash recovery, rotation, slots."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from rave.webhook import spool as spool_module
from rave.webhook.spool import FRAME, Spool, SpoolFull, frame, list_segments, parse_frames


def test_frames_round_trip_and_torn_tail() -> None:
    data = frame(b"one") + frame(b"two")
    assert parse_frames(data) == ([b"one", b"two"], len(data), False)
    torn = data + frame(b"three")[:-1]
    assert parse_frames(torn) == ([b"one", b"two"], len(data), False)
    corrupt = bytearray(data)
    corrupt[-1] ^= 0xFF
    assert parse_frames(bytes(corrupt)) == ([b"one"], FRAME.size + 3, True)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_group_commit_syncs_fewer_times_than_appends(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    syncs = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        syncs.append(fd)
        real(fd)

    monkeypatch.setattr(spool_module.os, "fdatasync", counting)

    async def scenario() -> Spool:
        spool = Spool(tmp_path)
        spool.open()
        await asyncio.gather(*(spool.append(b"event %d" % i) for i in range(500)))
        return spool

    spool = run(scenario())
    assert spool.records == 500
    assert 1 <= len(syncs) < 500
    batch = spool.read_batch(1000)
    assert batch.payloads == [b"event %d" % i for i in range(500)]  # in order
    spool.close()


def test_acknowledged_records_survive_a_restart_in_order(tmp_path: Path) -> None:
    async def write(first: int, count: int) -> None:
        spool = Spool(tmp_path)
        spool.open()
        for i in range(first, first + count):
            await spool.append(b"%d" % i)
        spool.close()  # as if the process died before draining

    run(write(0, 10))
    run(write(10, 5))

    async def drain() -> list[bytes]:
        spool = Spool(tmp_path)
        spool.open()
        assert spool.records == 15
        batch = spool.read_batch(4)
        spool.commit(batch)
        rest = spool.read_batch(100)
        spool.commit(rest)
        assert spool.records == 0
        segments = list_segments(spool.slot.directory)  # type: ignore[union-attr]
        spool.close()
        assert segments == [2]  # drained segments removed, only the open one left
        return batch.payloads + rest.payloads

    assert run(drain()) == [b"%d" % i for i in range(15)]


def test_torn_tail_after_a_crash_is_skipped(tmp_path: Path) -> None:
    async def write() -> Path:
        spool = Spool(tmp_path)
        spool.open()
        await spool.append(b"kept")
        path = spool.slot.directory / spool_module.segment_name(spool.current)  # type: ignore[union-attr]
        spool.close()
        return path

    path = run(write())
    with open(path, "ab") as handle:
        handle.write(frame(b"never acknowledged")[:7])

    async def read() -> list[bytes]:
        spool = Spool(tmp_path)
        spool.open()
        batch = spool.read_batch(10)
        spool.commit(batch)
        spool.close()
        return batch.payloads

    assert run(read()) == [b"kept"]


def test_rotation_and_uncommitted_data_kept(tmp_path: Path) -> None:
    async def scenario() -> None:
        spool = Spool(tmp_path, segment_bytes=65536)
        spool.open()
        for i in range(100):
            await spool.append(b"x" * 2000 + b"%d" % i)
        assert len(list_segments(spool.slot.directory)) > 2  # type: ignore[union-attr]
        seen = []
        while True:
            batch = spool.read_batch(7)
            if not batch.payloads:
                break
            seen += batch.payloads
            spool.commit(batch)
        assert [p[2000:] for p in seen] == [b"%d" % i for i in range(100)]
        assert list_segments(spool.slot.directory) == [spool.current]  # type: ignore[union-attr]
        spool.close()

    run(scenario())


def test_full_spool_refuses(tmp_path: Path) -> None:
    async def scenario() -> None:
        spool = Spool(tmp_path, max_bytes=1_048_576)
        spool.open()
        await spool.append(b"x" * 1_048_576)
        with pytest.raises(SpoolFull):
            await spool.append(b"y")
        spool.close()

    run(scenario())


def test_each_process_gets_its_own_slot_and_orphans_are_found(tmp_path: Path) -> None:
    async def scenario() -> None:
        first, second = Spool(tmp_path), Spool(tmp_path)
        first.open()
        second.open()
        assert first.slot.directory != second.slot.directory  # type: ignore[union-attr]
        await second.append(b"left behind")
        assert first.orphan_slots() == []  # held by a live spool
        second.close()
        orphans = first.orphan_slots()
        assert len(orphans) == 1
        assert orphans[0].read_batch(10).payloads == [b"left behind"]
        orphans[0].release()
        first.close()

    run(scenario())
