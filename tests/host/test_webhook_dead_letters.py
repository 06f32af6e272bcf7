"""Dead letters on a live staging host: a spooled record PostgreSQL refuses on its own becomes a
dead letter, the queue moves on, validation and the health check fail naming it, and
`rave-ops dead-letters` lists, shows, fails to redrive and discards it.

The refused record is planted as an orphan spool slot (one the receiver drains every 30 s):
provider "bogus" violates webhook_events' CHECK (SQLSTATE 23514), as a record spooled by an
older receiver, or damaged, would.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shlex
import time
import uuid
from typing import Any

import pytest

from rave.webhook.deadletter import letter_id
from rave.webhook.spool import frame, segment_name
from rave.webhook.store import Event
from tests.host.edge_support import client, github, health, hmac_secret, rows_for, wait_for
from tests.host.test_ops import rave_ops, sudo

STATE = "/var/lib/rave-webhook"
ORPHAN_SLOT = f"{STATE}/spool/900"  # far above the receiver's own slots (one per worker)
DEAD_LETTERS = f"{STATE}/deadletter"


@pytest.fixture(scope="module")
def name(staging) -> str:
    return str(staging.names[0])


@pytest.fixture(scope="module")
def box(staging, name) -> Any:
    return staging.testinfra_host(name)


def metric(box: Any, family: str) -> float:
    text = box.check_output("curl -sf http://127.0.0.1:8001/metrics")
    for line in text.splitlines():
        if line.startswith(f"{family} "):
            return float(line.split()[-1])
    raise AssertionError(f"{family} is not exposed")


def plant_refused_record(box: Any, marker: str) -> tuple[str, str]:
    """An orphan spool slot holding one record PostgreSQL refuses; (letter id, delivery id)."""
    body = json.dumps({"dead_letter_test": marker}).encode()
    delivery = f"dead-letter-test-{uuid.uuid4()}"  # not the marker: list prints the delivery
    event = Event("bogus", delivery, "push", time.time(), body, hashlib.sha256(body).digest())
    record = event.encode()
    data = base64.b64encode(frame(record)).decode()
    segment = f"{ORPHAN_SLOT}/{segment_name(0)}"
    # written under another name first: the drainer must never see half a segment
    script = (
        f"mkdir -m 700 {ORPHAN_SLOT} && echo {data} | base64 -d > {ORPHAN_SLOT}/planted.tmp "
        f"&& mv {ORPHAN_SLOT}/planted.tmp {segment}"
    )
    box.check_output(f"cd / && runuser -u rave-webhook -- sh -c {shlex.quote(script)}")
    return letter_id(record), event.delivery_id


def deliver_good_one(staging: Any, box: Any) -> None:
    body = json.dumps({"after_the_dead_letter": str(uuid.uuid4())}).encode()
    headers = github(hmac_secret(staging), body)
    with client(staging) as https:
        assert https.post("/webhook", content=body, headers=headers).status_code == 202
    wait_for(lambda: rows_for(box, headers["X-GitHub-Delivery"]) == 1, timeout=60)


def test_a_refused_record_is_dead_lettered_reported_and_handled_by_the_operator(staging, name, box):
    assert health(box)["dead_letters"] == 0, "dead letters left over before this test"
    marker = str(uuid.uuid4())
    letter, delivery = plant_refused_record(box, marker)
    short = letter[:16]
    try:
        # the receiver drains orphan slots every 30 s: the record becomes a letter
        wait_for(lambda: health(box)["dead_letters"] == 1, timeout=90, interval=2)
        assert metric(box, "rave_webhook_dead_letters") == 1
        assert metric(box, "rave_webhook_dead_lettered_total") >= 1
        assert metric(box, "rave_webhook_dead_letter_store_full") == 0
        assert box.file(f"{DEAD_LETTERS}/{letter}.letter").exists
        wait_for(lambda: not box.file(f"{ORPHAN_SLOT}/{segment_name(0)}").exists, timeout=30)
        assert rows_for(box, delivery) == 0
        # the queue moved on: a delivery after it is stored
        deliver_good_one(staging, box)
        journal = box.check_output(
            "journalctl -u rave-webhook --since '10 min ago' --no-pager -o cat | grep dead-letter"
        )
        assert f"bogus delivery {delivery}" in journal and "23514" in journal
        assert marker not in journal  # the payload is never logged
        # nor by PostgreSQL, which refused it: the error is there, without the row
        # (log_error_verbosity=terse drops "Failing row contains (...)", bound parameters are
        # never logged)
        pg_log = box.check_output("cat /var/log/postgresql/postgresql-15-main.log")
        assert "23514" in pg_log or "violates check constraint" in pg_log, pg_log[-2000:]
        assert marker not in pg_log
        # the whole journal (searched here: a grep on the host would log the marker through sudo)
        whole_journal = box.check_output("journalctl --since '15 min ago' --no-pager -o cat")
        assert marker not in whole_journal, "the payload reached the journal"

        # the operator's checks see it, naming the cause
        validation = rave_ops("--limit", name, "validate", timeout=180)
        assert validation.returncode == 1, validation.stdout[-3000:]
        assert f"{name} application/webhook dead letters" in validation.stdout
        assert "1 waiting (rave-ops dead-letters list)" in validation.stdout
        host_side = sudo(staging, name, "/usr/local/sbin/rave-validate-host")
        assert host_side.returncode == 1, host_side.stdout
        assert "FAILED: application/webhook dead letters" in host_side.stdout
        check = box.run("rave-healthcheck --quiet --no-metrics")
        assert check.rc == 2, check.stdout + check.stderr
        assert any(
            x.startswith("FAIL  webhook") and "dead letters" in x and "1 waiting" in x
            for x in check.stderr.splitlines()
        ), check.stderr

        # list: one line, no payload
        listed = rave_ops("--limit", name, "dead-letters", "list", timeout=120)
        assert listed.returncode == 0, listed.stdout + listed.stderr[-2000:]
        line = next(x for x in listed.stdout.splitlines() if x.startswith(short))
        assert "bogus" in line and delivery in line and "23514" in line
        assert marker not in listed.stdout + listed.stderr
        # show: the letter with its payload
        shown = rave_ops("--limit", name, "dead-letters", "show", short, timeout=120)
        assert shown.returncode == 0, shown.stdout + shown.stderr[-2000:]
        assert marker in shown.stdout and '"sqlstate": "23514"' in shown.stdout
        # redrive: PostgreSQL still refuses it; it stays
        redriven = rave_ops("--limit", name, "dead-letters", "redrive", short, timeout=120)
        assert redriven.returncode != 0
        assert f"still refused {short}: 23514" in redriven.stdout
        assert marker not in redriven.stdout + redriven.stderr
        assert box.file(f"{DEAD_LETTERS}/{letter}.letter").exists
        missing = rave_ops("--limit", name, "dead-letters", "discard", "0" * 64, timeout=120)
        assert missing.returncode != 0
        assert "no single dead letter matches" in missing.stdout
        # discard: gone, and the checks pass again
        discarded = rave_ops("--limit", name, "dead-letters", "discard", short, timeout=120)
        assert discarded.returncode == 0, discarded.stdout + discarded.stderr[-2000:]
        assert f"discarded {short}" in discarded.stdout
        assert not box.file(f"{DEAD_LETTERS}/{letter}.letter").exists
        wait_for(lambda: health(box)["dead_letters"] == 0, timeout=30)
        assert metric(box, "rave_webhook_dead_letters") == 0
        after = rave_ops("--limit", name, "validate", timeout=180)
        assert after.returncode == 0, after.stdout[-3000:] + after.stderr[-2000:]
        assert "webhook dead letters" in after.stdout
        assert sudo(staging, name, "/usr/local/sbin/rave-validate-host").returncode == 0
        check = box.run("rave-healthcheck --no-metrics")
        assert any(
            x.startswith("OK    webhook") and "dead letters" in x for x in check.stdout.splitlines()
        ), check.stdout + check.stderr
        assert "FAIL  webhook" not in check.stderr
    finally:
        box.run(f"rm -f {DEAD_LETTERS}/{letter}.letter; rm -rf {ORPHAN_SLOT}")


def test_listing_without_dead_letters_prints_so(name):
    listed = rave_ops("--limit", name, "dead-letters", "list", timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "no dead letters" in listed.stdout
