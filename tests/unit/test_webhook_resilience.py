"""The receiver on a bad day, against a real PostgreSQL: records PostgreSQL refuses become dead
letters and the queue moves on; a torn checkpoint or a full disk never stops the spool; hostile
bodies and headers never get a 500; the dead-letter command lists, shows, re-drives, discards."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rave.webhook.deadletter import DeadLetters, DeadLetterStoreFull
from rave.webhook.spool import Spool, SpoolFull, list_segments
from rave.webhook.store import Drainer, Event
from tests.tools import cannot_run_here
from tests.unit.webhook_strategies import bodies, property_settings
from tests.unit.webhook_support import (
    Cluster,
    Server,
    app_config,
    github_headers,
    rows,
    wait_until,
)

SECRET = b"resilience-test-secret"
ALLOWED = {200, 202, 400, 401, 405, 413, 503}
VARIANTS = ["signed", "signed", "no content type", "wrong secret", "unsigned", "form"]
PROPERTY = property_settings("RAVE_HYPOTHESIS_HTTP_EXAMPLES", 150)


@pytest.fixture(scope="module")
def server(pg: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    spool = tmp_path_factory.mktemp("http-spool")
    config = app_config(pg, spool / "spool", dead_letter_dir=str(spool / "deadletter"))
    with Server(config, [SECRET]) as running:
        yield running


def event(body: bytes, provider: str = "github") -> Event:
    return Event(provider, str(uuid.uuid4()), "push", time.time(), body,
                 hashlib.sha256(body + uuid.uuid4().bytes).digest())  # fmt: skip


def drain_all(pg: Cluster, spool: Spool, letters: DeadLetters) -> Drainer:
    config = app_config(pg, Path("/nonexistent"))
    drainer = Drainer(spool, config.conninfo, dead_letters=letters, batch_size=50)

    async def scenario() -> None:
        try:
            while await drainer.drain_once(spool):
                pass
        finally:
            await drainer.stop()

    asyncio.run(scenario())
    return drainer


def spooled(directory: Path, *records: bytes) -> Spool:
    spool = Spool(directory, segment_bytes=4096)

    async def scenario() -> None:
        spool.open()
        for record in records:
            await spool.append(record)

    asyncio.run(scenario())
    return spool


def stored(pg: Cluster, delivery: str) -> int:
    return rows(pg, "delivery_id = %s", (delivery,))


# -- dead letters ---------------------------------------------------------------------------


def test_a_record_postgresql_refuses_is_dead_lettered_and_the_queue_moves_on(
    pg: Cluster, tmp_path: Path
) -> None:
    before = event(b'{"n": 1}')
    nan = event(b'{"a": NaN}')  # what the old door let through: jsonb refuses it (22P02)
    bogus = event(b"{}", provider="bogus")  # the table's CHECK refuses it (23514)
    garbage = b"not a spool record"
    after = event(b'{"n": 2}')
    records = [before.encode(), nan.encode(), bogus.encode(), garbage, after.encode()]
    spool = spooled(tmp_path / "spool", *records)
    letters = DeadLetters(tmp_path / "deadletter")
    letters.open()
    try:
        drain_all(pg, spool, letters)
    finally:
        spool.close()
    assert stored(pg, before.delivery_id) == 1 and stored(pg, after.delivery_id) == 1
    assert stored(pg, nan.delivery_id) == 0 and stored(pg, bogus.delivery_id) == 0
    found = {letter.header.get("delivery_id"): letter for letter in letters.letters()}
    assert set(found) == {nan.delivery_id, bogus.delivery_id, None}
    assert found[nan.delivery_id].header["sqlstate"] == "22P02"
    assert found[bogus.delivery_id].header["sqlstate"] == "23514"
    assert found[nan.delivery_id].record == nan.encode()  # kept as it was, for a re-drive
    assert found[None].record == garbage
    # nothing of a payload in what the letter says about the refusal
    assert all("NaN" not in json.dumps(letter.header) for letter in letters.letters())
    assert letters.count == 3


def test_a_full_dead_letter_store_keeps_the_record_in_the_spool(
    pg: Cluster, tmp_path: Path
) -> None:
    nan = event(b'{"a": NaN}')
    after = event(b'{"n": 3}')
    spool = spooled(tmp_path / "spool", nan.encode(), after.encode())
    letters = DeadLetters(tmp_path / "deadletter", max_count=0)
    letters.open()
    try:
        with pytest.raises(DeadLetterStoreFull):
            drain_all(pg, spool, letters)
        assert spool.records == 2  # nothing dropped, nothing moved past the refused record
        assert letters.full
        letters.max_count = 10  # the operator made room
        drain_all(pg, spool, letters)
        assert spool.records == 0 and letters.count == 1
        assert stored(pg, after.delivery_id) == 1
    finally:
        spool.close()


def run_letters(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rave.webhook.deadletter", *args],
        env={**os.environ, "RAVE_WEBHOOK_CONFIG": str(config_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_dead_letter_command(pg: Cluster, tmp_path: Path) -> None:
    config = app_config(pg, tmp_path / "spool", dead_letter_dir=str(tmp_path / "deadletter"))
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config.__dict__))
    letters = DeadLetters(config.dead_letter_dir)
    letters.open()
    refused = event(b'{"a": NaN}')
    good = event(b'{"fixed": true}')
    refused_id = letters.add(refused.encode(), {"reason": "22P02", "delivery_id": "r"})
    good_id = letters.add(good.encode(), {"reason": "transient", "delivery_id": "g"})

    listing = run_letters(config_path, "list")
    assert listing.returncode == 0
    assert refused_id[:16] in listing.stdout and good_id[:16] in listing.stdout
    assert "NaN" not in listing.stdout  # list never prints a payload
    shown = run_letters(config_path, "show", refused_id[:12])
    assert shown.returncode == 0 and '{"a": NaN}' in shown.stdout

    still = run_letters(config_path, "redrive", refused_id)
    assert still.returncode == 1 and "22P02" in still.stderr
    assert "NaN" not in still.stderr  # PostgreSQL's DETAIL quotes the input: never printed
    assert run_letters(config_path, "redrive", good_id).returncode == 0
    assert stored(pg, good.delivery_id) == 1
    letters.rescan()
    assert [letter.letter_id for letter in letters.letters()] == [refused_id]

    assert run_letters(config_path, "show", "ffff").returncode == 2
    assert run_letters(config_path, "discard", "--all").returncode == 0
    letters.rescan()
    assert letters.count == 0
    assert "no dead letters" in run_letters(config_path, "list").stdout


# -- the spool on a bad day -----------------------------------------------------------------


@pytest.mark.parametrize("checkpoint", ["", "12", "x y", "1 2 3", "-1 5", "\x00\x00\x00", "9 9"])
def test_a_torn_or_empty_checkpoint_never_stops_a_start(tmp_path: Path, checkpoint: str) -> None:
    records = [event(b'{"n": %d}' % n).encode() for n in range(5)]
    spool = spooled(tmp_path, *records)
    slot = spool.slot
    assert slot is not None
    directory = slot.directory
    spool.close()
    (directory / "checkpoint").write_text(checkpoint)
    again = Spool(tmp_path)
    again.open()  # must not raise
    try:
        # unreadable: everything still in a segment is drained again (ON CONFLICT ignores it)
        expected = 0 if checkpoint == "9 9" else 5
        assert again.records == expected
    finally:
        again.close()


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        cannot_run_here("mounting a tmpfs needs root")
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_disk_never_stops_the_drain_from_freeing_space(pg: Cluster, tmp_path: Path) -> None:
    with tiny_tmpfs(tmp_path / "disk", "256k") as disk:
        spool = Spool(disk / "spool", segment_bytes=16384, max_bytes=10 << 20)
        accepted: list[Event] = []

        async def fill() -> None:
            spool.open()
            while True:
                record = event(json.dumps({"pad": "x" * 2000}).encode())
                try:
                    await spool.append(record.encode())
                except (OSError, SpoolFull):
                    return
                accepted.append(record)

        asyncio.run(fill())
        # the last bytes too: not even a checkpoint.tmp fits now
        with contextlib.suppress(OSError), open(disk / "filler", "wb") as filler:
            while True:
                filler.write(b"\0" * 512)
                filler.flush()
        letters = DeadLetters(disk / "deadletter")
        with contextlib.suppress(OSError):
            letters.open()
        try:
            drain_all(pg, spool, letters)
            assert spool.records == 0
            slot = spool.slot
            assert slot is not None
            assert len(list_segments(slot.directory)) <= 1  # drained segments are gone
        finally:
            spool.close()
        assert len(accepted) > 20
        assert all(stored(pg, e.delivery_id) == 1 for e in accepted)


# -- hostile HTTP ---------------------------------------------------------------------------


def _signed(body: bytes, variant: str) -> dict[str, str]:
    headers = github_headers(SECRET if variant != "wrong secret" else b"not-the-secret", body)
    if variant == "unsigned":
        del headers["X-Hub-Signature-256"]
    if variant == "form":
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if variant == "no content type":
        del headers["Content-Type"]
    return headers


@PROPERTY
@given(
    body=bodies(),
    variant=st.sampled_from(VARIANTS),
)
def test_any_body_and_signature_every_2xx_is_stored_and_no_forgery_is(
    server: Server, pg: Cluster, body: bytes, variant: str
) -> None:
    headers = _signed(body, variant)
    response = httpx.post(server.url + "/webhook", content=body, headers=headers, timeout=30)
    assert response.status_code in ALLOWED, (response.status_code, response.text)
    delivery = headers["X-GitHub-Delivery"]
    if response.status_code == 202:
        assert variant in ("signed", "no content type")
        wait_until(lambda: stored(pg, delivery) == 1, timeout=30)
    elif response.status_code == 200:  # a replay of signed content stored earlier
        digest = hashlib.sha256(body).digest()
        assert rows(pg, "content_sha256 = %s", (digest,)) == 1
    else:
        assert stored(pg, delivery) == 0
    health = httpx.get(server.url + "/healthz", timeout=10).json()
    assert health["dead_letters"] == 0  # the door let in nothing PostgreSQL refuses


def _raw(server: Server, request: bytes, pause: float = 0.0) -> bytes:
    with socket.create_connection(("127.0.0.1", server.config.listen_port), timeout=10) as sock:
        sock.sendall(request)
        if pause:
            time.sleep(pause)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


@pytest.mark.parametrize(
    "length",
    ["\u00b2", "+5", "-1", " 5", "5 5", "0x10", "99999999999999999999", "1e3", "", "\u00bd", "5,5"],
)
def test_odd_content_length_values_get_a_4xx_never_a_500(server: Server, length: str) -> None:
    body = b'{"a": 1}'
    headers = _signed(body, "signed")
    lines = [f"{k}: {v}" for k, v in headers.items()] + [f"Content-Length: {length}"]
    request = ("POST /webhook HTTP/1.1\r\nHost: x\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode(
        "latin-1"
    ) + body
    answer = _raw(server, request)
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None
    assert status is None or 400 <= status < 500, answer[:200]
    good = b'{"after": "%s"}' % uuid.uuid4().hex.encode()
    after = httpx.post(server.url + "/webhook", content=good, headers=_signed(good, "signed"))
    assert after.status_code == 202


def test_a_truncated_body_is_never_stored(server: Server, pg: Cluster) -> None:
    body = b'{"truncated": "%s"}' % uuid.uuid4().hex.encode()
    headers = _signed(body, "signed")
    lines = [f"{k}: {v}" for k, v in headers.items()] + [f"Content-Length: {len(body)}"]
    head = ("POST /webhook HTTP/1.1\r\nHost: x\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode()
    answer = _raw(server, head + body[: len(body) // 2], pause=0.5)
    assert b" 500 " not in answer[:20]
    time.sleep(0.5)
    assert stored(pg, headers["X-GitHub-Delivery"]) == 0


def test_a_full_dead_letter_store_is_not_reported_as_a_database_failure(
    pg: Cluster, tmp_path: Path
) -> None:
    # a refused record waiting in the spool (written before the door was strict), the store full
    left = spooled(tmp_path / "spool", event(b'{"a": NaN}').encode())
    left.close()
    config = app_config(
        pg,
        tmp_path / "spool",
        dead_letter_dir=str(tmp_path / "deadletter"),
        dead_letter_max_count=0,
    )
    with Server(config, [SECRET]) as running:

        def metric(name: str) -> float:
            text = httpx.get(running.url + "/metrics", timeout=10).text
            line = next(x for x in text.splitlines() if x.startswith(name + " "))
            return float(line.split()[1])

        wait_until(lambda: metric("rave_webhook_dead_letter_store_full") == 1.0)
        assert metric("rave_webhook_db_write_errors_total") == 0.0
        health = httpx.get(running.url + "/healthz", timeout=10).json()
        assert health["dead_letter_store_full"] is True


def test_an_idle_receiver_reports_whether_postgresql_answers(pg: Cluster, tmp_path: Path) -> None:
    """No delivery at all: the database gauge still follows PostgreSQL (up; down once it stops;
    up again), so a quiet host raises no WebhookDatabaseWritesFailing and a dead database does."""
    config = app_config(pg, tmp_path / "spool", dead_letter_dir=str(tmp_path / "deadletter"))
    with Server(config, [SECRET]) as running:

        def metric(name: str) -> float:
            text = httpx.get(running.url + "/metrics", timeout=10).text
            line = next(x for x in text.splitlines() if x.startswith(name + " "))
            return float(line.split()[1])

        wait_until(lambda: metric("rave_webhook_db_up") == 1.0, timeout=30)
        assert metric("rave_webhook_db_write_errors_total") == 0.0
        pg.stop()
        try:
            wait_until(lambda: metric("rave_webhook_db_up") == 0.0, timeout=60, interval=0.5)
        finally:
            pg.start()
        wait_until(lambda: metric("rave_webhook_db_up") == 1.0, timeout=60, interval=0.5)
