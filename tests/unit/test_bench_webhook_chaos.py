"""The chaos run's arithmetic (bench/webhook_chaos.py): what counts as lost and as duplicated."""

from __future__ import annotations

from bench.webhook_chaos import Tally


def test_every_acknowledged_delivery_stored_once_is_ok():
    tally = Tally(
        [("a", 202), ("b", 200), ("c", 502), ("d", 0)],
        [("a", "0"), ("b", "1"), ("d", "3")],  # d: stored, its answer lost: allowed
    )
    assert tally.ok and not tally.problems()
    assert tally.lines()[:5] == [
        "sent                   4",
        "answered 2xx           2",
        "answered non-2xx       1  (502: 1)",
        "connection errors      1",
        "stored                 3 rows, 3 deliveries (not answered 2xx: 1)",
    ]


def test_a_missing_acknowledged_delivery_is_lost():
    tally = Tally([("a", 202), ("b", 202), ("c", 503)], [("a", "0")])
    assert tally.lost == {"b"} and not tally.ok
    assert "lost: ['b']" in tally.problems()


def test_a_delivery_id_or_a_body_stored_twice_is_duplicated():
    twice = Tally([("a", 202), ("b", 202)], [("a", "0"), ("a", "0"), ("b", "1")])
    assert twice.duplicated == {"a", "body n=0"} and not twice.ok
    same_body = Tally([("a", 202), ("b", 202)], [("a", "0"), ("b", "0")])
    assert same_body.duplicated == {"body n=0"}


def test_a_stored_id_never_sent_is_reported():
    tally = Tally([("a", 202)], [("a", "0"), ("z", "9")])
    assert tally.unknown == {"z"} and not tally.ok
