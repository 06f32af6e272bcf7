"""The door's JSON rule proved against a real PostgreSQL 15: whatever the door accepts, jsonb
stores as it is (the same value read back), and whatever jsonb refuses, the door refuses."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import example, given

from rave.webhook.document import MAX_DEPTH, Unstorable, parse
from tests.unit.webhook_strategies import EDGE_NUMBERS, EDGE_STRINGS, bodies, property_settings
from tests.unit.webhook_support import Cluster

PROPERTY = property_settings("RAVE_HYPOTHESIS_EXAMPLES", 600)


@pytest.fixture(scope="module")
def conn(pg: Cluster) -> Iterator[psycopg.Connection]:
    with pg.admin() as connection:
        yield connection


def jsonb_of(conn: psycopg.Connection, body: bytes) -> str | None:
    """PostgreSQL's own verdict: the stored jsonb as text, or None when it refuses the body.
    The bytes go in as bytea and are decoded by PostgreSQL itself (encoding checks included)."""
    try:
        row = conn.execute("SELECT convert_from(%s::bytea, 'UTF8')::jsonb::text", (body,))
        return str(row.fetchone()[0])  # type: ignore[index]
    except psycopg.Error:
        return None


@PROPERTY
@given(body=bodies())
@example(body=b'{"a": NaN}')
@example(body=b'{"a": 1e131072}')
@example(body=b'["\\ud800"]')
@example(body=b'{"\\u0000": 1}')
@example(body=b"\xef\xbb\xbf{}")
@example(body='{"a": 1}'.encode("utf-16"))
@example(body=b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))
def test_the_door_accepts_only_what_jsonb_stores_as_it_is(
    conn: psycopg.Connection, body: bytes
) -> None:
    try:
        document = parse(body)
    except Unstorable:
        accepted = False
    else:
        accepted = True
    check_against_jsonb(conn, body, accepted, document if accepted else None)


def check_against_jsonb(
    conn: psycopg.Connection, body: bytes, accepted: bool, document: object
) -> None:
    stored = jsonb_of(conn, body)
    if accepted:
        assert stored is not None, f"door accepted what jsonb refuses: {body[:200]!r}"
        assert parse(stored.encode()) == document  # stored as it is, not altered
    if stored is None:
        assert not accepted, f"jsonb refuses what the door accepted: {body[:200]!r}"


@pytest.mark.parametrize("piece", EDGE_NUMBERS + EDGE_STRINGS)
def test_every_edge_piece_alone_and_nested(conn: psycopg.Connection, piece: str) -> None:
    for text in (piece, f"[{piece}]", f'{{"k": {piece}}}', f"{{{piece}: 1}}"):
        body = text.encode("utf-8", "surrogatepass")
        try:
            document: object = parse(body)
            accepted = True
        except Unstorable:
            document, accepted = None, False
        check_against_jsonb(conn, body, accepted, document)


@pytest.mark.parametrize(
    "body",
    [b"{}", b"[]", b'{"a": [1, 2.5, -0, 1e131071, 1e-16383, "\\ud83d\\ude00", "\\\\u0000"]}'],
)
def test_the_door_and_jsonb_agree_on_storable_edges(conn: psycopg.Connection, body: bytes) -> None:
    stored = jsonb_of(conn, body)
    assert stored is not None
    assert parse(stored.encode()) == parse(body)
