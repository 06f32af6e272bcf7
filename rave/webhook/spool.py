"""A durable local spool: append-only segment files, fsync'd with group commit.

Layout: <spool_dir>/<slot>/ where a slot is claimed by one process with flock (several uvicorn
workers each get their own). In a slot: `lock`, segments `<16 digits>.seg`, and `checkpoint`
("<segment> <offset>": everything before it is committed to PostgreSQL).

A frame is `>II` (length, crc32) followed by the payload. `append` returns only once the frame
is on disk (fdatasync); requests arriving while a sync runs are written together by the next
one (group commit), so the cost of a sync is shared by every request waiting on it.
A process never appends to a segment it did not create: after a crash the old segments are
only read (a torn tail frame, never acknowledged, is skipped) and a new segment is started.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import struct
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("rave_webhook.spool")

FRAME = struct.Struct(">II")
SEGMENT_SUFFIX = ".seg"
CHECKPOINT_WIDTH = 40  # "<segment> <offset>" padded, so an in-place rewrite never grows it


class SpoolFull(Exception):
    """The undrained spool exceeds its cap: refuse (503) rather than fill the disk."""


def frame(payload: bytes) -> bytes:
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def parse_frames(data: bytes, limit: int | None = None) -> tuple[list[bytes], int, bool]:
    """Complete, valid frames at the start of data: (payloads, bytes consumed, hit garbage)."""
    payloads: list[bytes] = []
    pos = 0
    end = len(data)
    while pos + FRAME.size <= end and (limit is None or len(payloads) < limit):
        length, crc = FRAME.unpack_from(data, pos)
        start = pos + FRAME.size
        if start + length > end:
            break  # incomplete: more data may follow (or a torn tail)
        payload = data[start : start + length]
        if zlib.crc32(payload) != crc:
            return payloads, pos, True
        payloads.append(payload)
        pos = start + length
    return payloads, pos, False


def segment_name(number: int) -> str:
    return f"{number:016d}{SEGMENT_SUFFIX}"


def list_segments(directory: Path) -> list[int]:
    numbers = []
    for entry in directory.iterdir():
        if entry.name.endswith(SEGMENT_SUFFIX) and entry.name[:16].isdigit():
            numbers.append(int(entry.name[:16]))
    return sorted(numbers)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Position:
    segment: int
    offset: int


@dataclass
class Batch:
    payloads: list[bytes]
    end: Position  # checkpoint to store once the payloads are committed
    drained_segments: list[int]  # segments wholly consumed by this batch (removed on commit)


class Slot:
    """One claimed spool directory: its checkpoint and its segments (read side)."""

    def __init__(self, directory: Path, lock_fd: int):
        self.directory = directory
        self.lock_fd = lock_fd
        self.checkpoint = self._read_checkpoint()

    @classmethod
    def try_claim(cls, directory: Path) -> Slot | None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return cls(directory, fd)

    def release(self) -> None:
        fcntl.flock(self.lock_fd, fcntl.LOCK_UN)
        os.close(self.lock_fd)

    def _read_checkpoint(self) -> Position:
        """An empty, torn or garbled checkpoint means "from the oldest segment": it only
        re-inserts committed rows, which ON CONFLICT ignores. It never stops a start."""
        path = self.directory / "checkpoint"
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            return Position(0, 0)
        parts = text.split()
        if len(parts) == 2 and all(p.isascii() and p.isdigit() for p in parts):
            return Position(int(parts[0]), int(parts[1]))
        log.warning("spool checkpoint %s unreadable: draining from the oldest segment", path)
        return Position(0, 0)

    def store_checkpoint(self, position: Position) -> None:
        # not fsync'd: losing it only re-inserts committed rows, which ON CONFLICT ignores
        text = f"{position.segment} {position.offset}\n"
        tmp = self.directory / "checkpoint.tmp"
        try:
            tmp.write_text(text)
            os.replace(tmp, self.directory / "checkpoint")
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # a full disk: overwrite in place (a fixed-width line fits the block the file has),
            # so draining can go on freeing space; a torn result is read as "from the start"
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            self._overwrite_checkpoint(text)
        self.checkpoint = position

    def _overwrite_checkpoint(self, text: str) -> None:
        fd = os.open(self.directory / "checkpoint", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            data = text.ljust(CHECKPOINT_WIDTH).encode()
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)

    def read_batch(
        self, max_records: int, current: int | None = None, current_end: int = 0
    ) -> Batch:
        """Records after the checkpoint, in order. `current` is the segment being written
        (read only up to current_end, its durable size); older segments are read to the end."""
        payloads: list[bytes] = []
        drained: list[int] = []
        position = Position(self.checkpoint.segment, self.checkpoint.offset)
        for number in list_segments(self.directory):
            if number < position.segment:
                drained.append(number)  # left over from a crash between commit and unlink
                continue
            offset = position.offset if number == position.segment else 0
            path = self.directory / segment_name(number)
            with open(path, "rb") as handle:
                handle.seek(offset)
                if number == current:
                    data = handle.read(max(0, current_end - offset))
                else:
                    data = handle.read()
            found, used, garbage = parse_frames(data, max_records - len(payloads))
            payloads += found
            if number == current:
                return Batch(payloads, Position(number, offset + used), drained)
            if len(payloads) >= max_records and offset + used < offset + len(data):
                return Batch(payloads, Position(number, offset + used), drained)
            if garbage or used < len(data):
                log.warning(
                    "spool segment %s: %d bytes after the last valid frame skipped (torn write)",
                    path,
                    len(data) - used,
                )
            drained.append(number)
            position = Position(number + 1, 0)
            if len(payloads) >= max_records:
                break
        return Batch(payloads, position, drained)

    def commit(self, batch: Batch, current: int | None = None) -> None:
        # segments wholly consumed go first: a checkpoint naming a removed segment reads on
        # from the next one, and on a full disk the removal is what makes room for the write
        for number in batch.drained_segments:
            if number != current:
                (self.directory / segment_name(number)).unlink(missing_ok=True)
        self.store_checkpoint(batch.end)

    def backlog(self) -> tuple[int, int]:
        """(records, bytes) after the checkpoint: counted once at start-up."""
        records = size = 0
        for number in list_segments(self.directory):
            if number < self.checkpoint.segment:
                continue
            data = (self.directory / segment_name(number)).read_bytes()
            if number == self.checkpoint.segment:
                data = data[self.checkpoint.offset :]
            found, used, _ = parse_frames(data)
            records += len(found)
            size += used
        return records, size


class Spool:
    """The write side (group commit) plus the reading of this process's own slot."""

    def __init__(
        self,
        root: str | Path,
        segment_bytes: int = 8 * 1_048_576,
        max_bytes: int = 1024 * 1_048_576,
        on_change: Callable[[], None] | None = None,
    ):
        self.root = Path(root)
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes
        self.on_change = on_change or (lambda: None)
        self.slot: Slot | None = None
        self.fd: int | None = None
        self.current = 0
        self.size = 0  # durable size of the current segment
        self.records = 0  # undrained records of this slot
        self.bytes = 0  # undrained bytes of this slot
        self.appended = asyncio.Event()
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._flushing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool-sync")

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        index = 0
        while self.slot is None:
            self.slot = Slot.try_claim(self.root / str(index))
            index += 1
        self.records, self.bytes = self.slot.backlog()
        existing = list_segments(self.slot.directory)
        self.current = max([*existing, self.slot.checkpoint.segment - 1]) + 1
        self._open_segment()
        log.info("spool slot %s: %d undrained records recovered", self.slot.directory, self.records)
        self.on_change()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.slot is not None:
            self.slot.release()
            self.slot = None
        self._executor.shutdown(wait=True)

    def _open_segment(self) -> None:
        assert self.slot is not None
        path = self.slot.directory / segment_name(self.current)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.size = os.fstat(self.fd).st_size
        fsync_dir(self.slot.directory)

    def _rotate(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.current += 1
        self._open_segment()

    # -- write side --------------------------------------------------------------------------
    async def append(self, payload: bytes) -> None:
        """Return once the payload is durable; raise SpoolFull or OSError otherwise."""
        if self.bytes >= self.max_bytes:
            raise SpoolFull(f"{self.bytes} undrained bytes")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((frame(payload), future))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())
        await future

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                data = b"".join(item for item, _ in batch)
                try:
                    if self.size >= self.segment_bytes:
                        self._rotate()
                    await loop.run_in_executor(self._executor, self._write, data)
                except OSError as error:
                    log.error("spool write failed: %s", error)
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                self.size += len(data)
                self.records += len(batch)
                self.bytes += len(data)
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)
                self.appended.set()
                self.on_change()
        finally:
            self._flushing = False

    def _write(self, data: bytes) -> None:
        assert self.fd is not None
        fd = self.fd
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fdatasync(fd)
        except OSError:
            # never leave a torn frame where the next append would follow it
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self.size)
            raise

    # -- read side (the drainer) ---------------------------------------------------------------
    def read_batch(self, max_records: int) -> Batch:
        assert self.slot is not None
        return self.slot.read_batch(max_records, self.current, self.size)

    @property
    def checkpoint(self) -> Position:
        assert self.slot is not None
        return self.slot.checkpoint

    def commit(self, batch: Batch) -> None:
        assert self.slot is not None
        self.slot.commit(batch, self.current)
        self.records -= len(batch.payloads)
        self.bytes -= sum(FRAME.size + len(p) for p in batch.payloads)
        self.on_change()

    def orphan_slots(self) -> list[Slot]:
        """Other slots no live process holds (a worker count went down, or a crash)."""
        claimed: list[Slot] = []
        assert self.slot is not None
        for entry in sorted(self.root.iterdir()):
            if not entry.is_dir() or entry == self.slot.directory or not entry.name.isdigit():
                continue
            if not list_segments(entry):
                continue
            slot = Slot.try_claim(entry)
            if slot is not None:
                claimed.append(slot)
        return claimed
