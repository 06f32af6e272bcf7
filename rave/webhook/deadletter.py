"""Dead letters: spooled deliveries PostgreSQL refused on their own, kept so the queue moves on.

A letter is one file in <dead_letter_dir>: a JSON header line (provider, delivery id, why) and
the spool record as it was. Its name is the record's sha256, so writing the same record again
after a crash is a no-op. The store is bounded (count and bytes): when full, the drainer stops
at the refused record (nothing is dropped), the spool fills, and the alert says why.

Operator command (as the receiver's user, on the host; `rave-ops dead-letters` wraps it):
    python3 -m rave_webhook.deadletter list | show ID | redrive ID|--all | discard ID|--all
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .spool import fsync_dir

SUFFIX = ".letter"


class DeadLetterStoreFull(Exception):
    """The store is at its bound: the drainer keeps the record in the spool instead."""


@dataclass(frozen=True)
class Letter:
    letter_id: str
    header: dict[str, object]
    record: bytes
    size: int


def letter_id(record: bytes) -> str:
    return hashlib.sha256(record).hexdigest()


class DeadLetters:
    def __init__(self, directory: str | Path, max_count: int = 10_000, max_bytes: int = 64 << 20):
        self.directory = Path(directory)
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.count = 0
        self.bytes = 0
        self.full = False

    def open(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for leftover in self.directory.glob("*.tmp"):  # a write torn by a crash
            leftover.unlink(missing_ok=True)
        self.rescan()

    def rescan(self) -> None:
        count = size = 0
        for path in self._paths():
            with contextlib.suppress(FileNotFoundError):
                size += path.stat().st_size
                count += 1
        self.count, self.bytes = count, size

    def _paths(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if p.name.endswith(SUFFIX))

    def add(self, record: bytes, header: dict[str, object]) -> str:
        """Store durably (fsync'd) before the caller moves the spool past the record."""
        identifier = letter_id(record)
        path = self.directory / f"{identifier}{SUFFIX}"
        if path.exists():
            return identifier
        data = json.dumps(header, sort_keys=True).encode() + b"\n" + record
        if self.count + 1 > self.max_count or self.bytes + len(data) > self.max_bytes:
            self.full = True
            raise DeadLetterStoreFull(f"{self.count} letters, {self.bytes} bytes")
        tmp = self.directory / f"{identifier}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(self.directory)
        self.count += 1
        self.bytes += len(data)
        self.full = False
        return identifier

    def letters(self) -> Iterator[Letter]:
        for path in self._paths():
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            head, _, record = data.partition(b"\n")
            try:
                header = json.loads(head)
            except ValueError:
                header = {"reason": "unreadable header"}
            yield Letter(path.name[: -len(SUFFIX)], header, record, len(data))

    def get(self, identifier: str) -> Letter:
        if not identifier or any(c not in "0123456789abcdef" for c in identifier):
            raise KeyError(identifier)
        matches = [letter for letter in self.letters() if letter.letter_id.startswith(identifier)]
        if len(matches) != 1:
            raise KeyError(identifier)
        return matches[0]

    def remove(self, identifier: str) -> None:
        (self.directory / f"{identifier}{SUFFIX}").unlink(missing_ok=True)
        fsync_dir(self.directory)
        self.rescan()
        self.full = False


# -- the operator command ----------------------------------------------------------------------


def _summary(letter: Letter) -> str:
    h = letter.header
    dead_at = h.get("dead_at")
    when = (
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(dead_at)))
        if isinstance(dead_at, (int, float))
        else "?"
    )
    return (
        f"{letter.letter_id[:16]}  {when}  {h.get('provider', '?')}  "
        f"{h.get('delivery_id', '?')}  {h.get('sqlstate', '-')}  {h.get('reason', '?')}"
    )


def _redrive(letter: Letter, conninfo: str) -> str | None:
    """Insert the letter's record; None on success, else the refusal (no payload excerpt)."""
    import asyncio

    import psycopg

    from .store import Event, insert_events

    async def insert() -> None:
        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
        try:
            await insert_events(conn, [Event.decode(letter.record)])
        finally:
            await conn.close()

    try:
        asyncio.run(insert())
    except psycopg.Error as error:
        return f"{error.sqlstate or '-'} {error.diag.message_primary or type(error).__name__}"
    except ValueError as error:
        return f"undecodable record: {error}"
    return None


def main(argv: list[str] | None = None) -> int:
    from .config import Config

    parser = argparse.ArgumentParser(prog="rave_webhook.deadletter", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="one line per letter: id, when, provider, delivery, why")
    show = commands.add_parser("show", help="a letter's header and body")
    show.add_argument("id")
    for name, text in (("redrive", "insert again, remove on success"), ("discard", "delete")):
        command = commands.add_parser(name, help=text)
        which = command.add_mutually_exclusive_group(required=True)
        which.add_argument("id", nargs="?")
        which.add_argument("--all", action="store_true")
    args = parser.parse_args(argv)
    config = Config.load()
    store = DeadLetters(config.dead_letter_dir)
    if not store.directory.is_dir():
        print("no dead letters")
        return 0
    store.rescan()
    try:
        if args.command == "list":
            lines = [_summary(letter) for letter in store.letters()]
            print("\n".join(lines) if lines else "no dead letters")
            return 0
        if args.command == "show":
            letter = store.get(args.id)
            print(json.dumps(letter.header, indent=2, sort_keys=True))
            sys.stdout.flush()
            sys.stdout.buffer.write(letter.record.partition(b"\n")[2] + b"\n")
            return 0
        targets = list(store.letters()) if args.all else [store.get(args.id)]
    except KeyError as missing:
        print(f"no single dead letter matches {missing}", file=sys.stderr)
        return 2
    failed = 0
    for letter in targets:
        if args.command == "discard":
            store.remove(letter.letter_id)
            print(f"discarded {letter.letter_id[:16]}")
            continue
        refused = _redrive(letter, config.conninfo())
        if refused is None:
            store.remove(letter.letter_id)
            print(f"redriven {letter.letter_id[:16]}")
        else:
            failed += 1
            print(f"still refused {letter.letter_id[:16]}: {refused}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
