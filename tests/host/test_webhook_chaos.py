"""Chaos on the webhook data path of a live staging host (bench/webhook_chaos.py is the core):
signed load through nginx on 3002 while PostgreSQL is stopped and started, the receiver is
killed with SIGKILL and nginx is restarted. Every delivery answered 2xx is one row, none twice;
answers other than 2xx (502 while the receiver restarts) and connection errors are allowed."""

from __future__ import annotations

from bench.webhook_chaos import SERVICES, run_chaos
from tests.host.edge_support import PORT, hmac_secret, sql


def test_every_acknowledged_delivery_is_one_row_through_outages_kills_and_restarts(staging, host):
    address = staging.address(staging.names[0])
    tally = run_chaos(
        address,
        PORT,
        hmac_secret(staging),
        host.check_output,
        lambda query: sql(host, query),
        seconds=50,
        rate=50,
    )
    print("\n" + "\n".join(tally.lines()))
    for unit in SERVICES:
        assert host.service(unit).is_running, f"{unit} is not running after the chaos run"
    # the disturbances happened: the receiver was replaced, the outage went to the spool
    before, after = tally.receiver_pids
    assert before not in ("", "0") and after not in ("", "0", before), tally.receiver_pids
    assert tally.spooled_during_outage > 0, "nothing was spooled while PostgreSQL was down"
    assert len(tally.accepted) >= tally.sent // 2, "\n".join(tally.lines())
    # what the receiver acknowledged, PostgreSQL holds: each exactly once
    problems = tally.problems()  # lost, duplicated, or stored but never sent
    assert not problems, problems
