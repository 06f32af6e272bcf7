"""The receiver end to end on a private PostgreSQL: statuses, no rows for refusals, durability."""

from __future__ import annotations

import concurrent.futures
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rave.webhook import migrate
from tests.unit.webhook_support import (
    Cluster,
    Server,
    app_config,
    github_headers,
    rows,
    wait_until,
)

SECRET = b"unit-test-secret"
OLD_SECRET = b"unit-test-old-secret"
STANDARD_SECRET = b"unit-test-standard-webhooks-secret"
TOKEN = b"unit-test-gitlab-token"


@pytest.fixture
def server(pg: Cluster, tmp_path: Path) -> Iterator[Server]:
    with Server(app_config(pg, tmp_path / "spool"), [OLD_SECRET, SECRET]) as running:
        yield running


def post(server: Server, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(server.url + "/webhook", content=body, headers=headers, timeout=30)


def delivered(pg: Cluster, delivery: str) -> int:
    return rows(pg, "delivery_id = %s", (delivery,))


def sentinel(server: Server, pg: Cluster) -> None:
    """Events drain in order: once a later good delivery is in, earlier ones would be too."""
    body = json.dumps({"sentinel": str(uuid.uuid4())}).encode()  # the same body is a replay
    headers = github_headers(SECRET, body)
    assert post(server, body, headers).status_code == 202
    wait_until(lambda: delivered(pg, headers["X-GitHub-Delivery"]) == 1)


def test_accepted_once_and_redelivery_is_not_a_second_row(server: Server, pg: Cluster) -> None:
    body = json.dumps({"ref": "refs/heads/main", "n": 1}).encode()
    headers = github_headers(SECRET, body)
    first = post(server, body, headers)
    assert first.status_code == 202, first.text
    again = post(server, body, headers)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    wait_until(lambda: delivered(pg, headers["X-GitHub-Delivery"]) == 1)
    # the same signed content under a new delivery id is a replay, not a second event
    replay = github_headers(SECRET, body)
    assert post(server, body, replay).status_code == 200
    # the old secret of a rotation still verifies
    old_body = json.dumps({"ref": "refs/heads/main", "n": 2}).encode()
    old = github_headers(OLD_SECRET, old_body)
    assert post(server, old_body, old).status_code == 202
    sentinel(server, pg)
    assert delivered(pg, headers["X-GitHub-Delivery"]) == 1
    assert delivered(pg, old["X-GitHub-Delivery"]) == 1
    assert delivered(pg, replay["X-GitHub-Delivery"]) == 0
    with pg.admin() as conn:
        payload, event = conn.execute(
            "SELECT payload, event FROM webhook_events WHERE delivery_id = %s",
            (headers["X-GitHub-Delivery"],),
        ).fetchone()  # type: ignore[misc]
    assert payload == {"ref": "refs/heads/main", "n": 1} and event == "push"


def test_redelivery_after_a_restart_is_not_a_second_row(pg: Cluster, tmp_path: Path) -> None:
    body = b'{"restart": 1}'
    headers = github_headers(SECRET, body)
    for _ in range(2):  # a fresh process has no memory of the first delivery: the DB dedups
        with Server(app_config(pg, tmp_path / "spool"), [SECRET]) as server:
            assert post(server, body, headers).status_code == 202
            sentinel(server, pg)
    assert delivered(pg, headers["X-GitHub-Delivery"]) == 1


def _refusals() -> list[tuple[str, str, bytes, dict[str, str], int]]:
    good = b'{"ok": true}'
    cases: list[tuple[str, str, bytes, dict[str, str], int]] = []
    forged = github_headers(b"attacker", good)
    cases.append(("forged", "POST", good, forged, 401))
    missing = github_headers(SECRET, good)
    del missing["X-Hub-Signature-256"]
    cases.append(("missing signature", "POST", good, missing, 401))
    tampered = github_headers(SECRET, good)
    cases.append(("tampered body", "POST", b'{"ok": false}', tampered, 401))
    bad_json = b'{"ok": tru'
    cases.append(("malformed json", "POST", bad_json, github_headers(SECRET, bad_json), 400))
    no_id = github_headers(SECRET, good)
    del no_id["X-GitHub-Delivery"]
    cases.append(("missing delivery id", "POST", good, no_id, 400))
    big = b'{"x": "' + b"a" * 70000 + b'"}'
    cases.append(("oversize", "POST", big, github_headers(SECRET, big), 413))
    cases.append(("wrong method", "GET", b"", github_headers(SECRET, good), 405))
    cases.append(("wrong method PUT", "PUT", good, github_headers(SECRET, good), 405))
    gitlab = {
        "X-Gitlab-Event": "Push Hook",
        "X-Gitlab-Token": "wrong",
        "X-Gitlab-Event-UUID": str(uuid.uuid4()),
        "X-GitHub-Delivery": str(uuid.uuid4()),
    }
    cases.append(("gitlab wrong token", "POST", good, gitlab, 401))
    return cases


@pytest.mark.parametrize(
    ("label", "method", "body", "headers", "status"),
    _refusals(),
    ids=[case[0] for case in _refusals()],
)
def test_refusals_get_their_status_and_leave_no_row(
    server: Server,
    pg: Cluster,
    label: str,
    method: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
) -> None:
    before = rows(pg)
    response = httpx.request(
        method, server.url + "/webhook", content=body or None, headers=headers, timeout=30
    )
    assert response.status_code == status, (label, response.text)
    if status == 405:
        assert response.headers["allow"] == "POST"
    sentinel(server, pg)
    assert rows(pg) == before + 1  # only the sentinel
    for header in ("X-GitHub-Delivery", "X-Gitlab-Event-UUID"):
        if header in headers:
            assert delivered(pg, headers[header]) == 0


def test_chunked_oversize_body_is_refused(server: Server) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b"a" * 1000

    headers = github_headers(SECRET, b"{}")
    response = httpx.post(server.url + "/webhook", content=chunks(), headers=headers, timeout=30)
    assert response.status_code == 413


def test_gitlab_and_standard_webhooks(pg: Cluster, tmp_path: Path) -> None:
    from rave.webhook.verify import ProviderSecrets

    secrets = ProviderSecrets(github=[SECRET], standard=[STANDARD_SECRET], gitlab=[TOKEN])
    config = app_config(pg, tmp_path / "spool", gitlab=True)
    with Server(config, secrets) as server:
        _gitlab_and_standard(server, pg)


def _gitlab_and_standard(server: Server, pg: Cluster) -> None:
    from rave.webhook.verify import standard_signature

    gitlab_id = str(uuid.uuid4())
    gitlab = {
        "Content-Type": "application/json",
        "X-Gitlab-Event": "Merge Request Hook",
        "X-Gitlab-Token": SECRET.decode(),  # the GitHub secret is not a token
        "X-Gitlab-Event-UUID": gitlab_id,
    }
    assert post(server, b'{"object_kind": "merge_request"}', gitlab).status_code == 401
    gitlab["X-Gitlab-Token"] = TOKEN.decode()
    assert post(server, b'{"object_kind": "merge_request"}', gitlab).status_code == 202
    body = b'{"type": "build.finished"}'
    import time

    timestamp = str(int(time.time()))
    standard = {
        "Content-Type": "application/json",
        "webhook-id": "msg_" + uuid.uuid4().hex,
        "webhook-timestamp": timestamp,
        "webhook-signature": standard_signature(SECRET, "", timestamp, body),
    }
    standard["webhook-signature"] = standard_signature(
        SECRET, standard["webhook-id"], timestamp, body
    )
    assert post(server, body, standard).status_code == 401  # GitHub's secret, not this one's
    standard["webhook-signature"] = standard_signature(
        STANDARD_SECRET, standard["webhook-id"], timestamp, body
    )
    assert post(server, body, standard).status_code == 202
    wait_until(lambda: delivered(pg, standard["webhook-id"]) == 1)
    assert delivered(pg, gitlab_id) == 1
    with pg.admin() as conn:
        event = conn.execute(
            "SELECT event FROM webhook_events WHERE delivery_id = %s", (standard["webhook-id"],)
        ).fetchone()
    assert event == ("build.finished",)


def test_postgresql_down_keeps_accepting_and_drains_exactly_once(
    pg: Cluster, tmp_path: Path
) -> None:
    config = app_config(pg, tmp_path / "spool")
    ids: list[str] = []

    def send(server: Server, n: int) -> str:
        body = json.dumps({"n": n}).encode()
        headers = github_headers(SECRET, body)
        response = post(server, body, headers)
        assert response.status_code == 202, response.text
        return headers["X-GitHub-Delivery"]

    with Server(config, [SECRET]) as server:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            ids += pool.map(lambda n: send(server, n), range(50))
        pg.stop()
        try:
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                ids += pool.map(lambda n: send(server, n), range(50, 250))
            health = httpx.get(server.url + "/healthz").json()
            assert health["spool_records"] > 0
            metrics = httpx.get(server.url + "/metrics").text
            assert "rave_webhook_db_write_errors_total 0.0" not in metrics
        finally:
            pg.start()
        wait_until(lambda: httpx.get(server.url + "/healthz").json()["spool_records"] == 0, 60)
    assert len(set(ids)) == 250
    with pg.admin() as conn:
        found = conn.execute(
            "SELECT delivery_id, count(*) FROM webhook_events WHERE delivery_id = ANY(%s) "
            "GROUP BY delivery_id",
            (ids,),
        ).fetchall()
    assert len(found) == 250 and all(count == 1 for _, count in found)


def test_spool_survives_a_receiver_restart_while_postgresql_is_down(
    pg: Cluster, tmp_path: Path
) -> None:
    config = app_config(pg, tmp_path / "spool")
    ids = []
    pg.stop()
    try:
        with Server(config, [SECRET]) as server:
            for n in range(20):
                body = json.dumps({"restart": n, "run": str(tmp_path)}).encode()
                headers = github_headers(SECRET, body)
                assert post(server, body, headers).status_code == 202
                ids.append(headers["X-GitHub-Delivery"])
    finally:
        pg.start()
    with Server(config, [SECRET]) as server:
        wait_until(lambda: httpx.get(server.url + "/healthz").json()["spool_records"] == 0, 60)
    with pg.admin() as conn:
        ordered = conn.execute(
            "SELECT delivery_id FROM webhook_events WHERE delivery_id = ANY(%s) ORDER BY id",
            (ids,),
        ).fetchall()
    assert [row[0] for row in ordered] == ids  # all of them, once, in arrival order


def test_metrics_count_outcomes(server: Server) -> None:
    body = b"{}"
    post(server, body, github_headers(b"forged", body))
    post(server, body, github_headers(SECRET, body))
    text = httpx.get(server.url + "/metrics").text
    assert 'rave_webhook_requests_total{outcome="unauthorized"} 1.0' in text
    assert 'rave_webhook_requests_total{outcome="accepted"} 1.0' in text
    assert 'rave_webhook_verification_failures_total{provider="github"} 1.0' in text
    assert "rave_webhook_request_duration_seconds_bucket" in text
    assert "rave_webhook_spool_depth" in text


def test_migrations_are_idempotent_and_append_only(pg: Cluster, tmp_path: Path) -> None:
    with pg.admin() as conn:
        assert migrate.apply(conn, migrate.available()) == []
        assert migrate.pending(conn, migrate.available()) == []
        edited = [
            migrate.Migration(m.version, m.name, m.sql + "\n-- edited") for m in migrate.available()
        ]
        with pytest.raises(SystemExit, match="changed after it was applied"):
            migrate.pending(conn, edited)
        extra = tmp_path / "migrations"
        extra.mkdir()
        for m in migrate.available():
            (extra / f"{m.name}.sql").write_text(m.sql)
        (extra / "9999_test_column.sql").write_text(
            "ALTER TABLE webhook_events ADD COLUMN test_note text;"
        )
        before = rows(pg)
        assert migrate.apply(conn, migrate.available(extra)) == ["9999_test_column"]
        assert migrate.apply(conn, migrate.available(extra)) == []
        assert rows(pg) == before  # no data lost
        conn.execute("ALTER TABLE webhook_events DROP COLUMN test_note")
        conn.execute("DELETE FROM schema_migrations WHERE version = '9999'")


def test_writer_role_cannot_read_or_change_events(pg: Cluster) -> None:
    import psycopg

    from tests.unit.webhook_support import WRITER_PASSWORD

    with psycopg.connect(
        pg.dsn("rave_webhook", WRITER_PASSWORD, "rave_webhook"), autocommit=True
    ) as conn:
        for statement in (
            "SELECT payload FROM webhook_events",
            "DELETE FROM webhook_events",
            "UPDATE webhook_events SET event = 'x'",
            "CREATE TABLE intruder (id int)",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
