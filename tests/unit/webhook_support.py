"""Helpers for the webhook unit tests: a private PostgreSQL cluster and a live uvicorn server.

The cluster is created with Debian's postgresql package (`make system-deps` installs it) in a
temporary directory on a free port: nothing is skipped, nothing outside the tmp dir is touched.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import hmac
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import uvicorn

from rave.webhook import migrate
from rave.webhook.app import create_app
from rave.webhook.config import Config

ADMIN_PASSWORD = "admin-test-password"
WRITER_PASSWORD = "writer-test-password"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_bin() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not candidates:
        raise RuntimeError("PostgreSQL server binaries missing: run `make system-deps`")
    return Path(candidates[-1]).parent


@dataclass
class Cluster:
    directory: Path
    port: int
    bindir: Path
    run_as: str | None

    def _cmd(self, *args: str) -> list[str]:
        if self.run_as:
            return ["runuser", "-u", self.run_as, "--", *args]
        return list(args)

    def pg_ctl(self, *args: str) -> None:
        subprocess.run(
            self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.directory / "data"), *args),
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=120,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.pg_ctl("-w", "-t", "60", "-l", str(self.directory / "log"), "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("-w", "-t", "60", "-m", mode, "stop")

    def dsn(self, user: str = "postgres", password: str = ADMIN_PASSWORD, db: str = "") -> str:
        return (
            f"host=127.0.0.1 port={self.port} user={user} password={password} "
            f"dbname={db or 'postgres'} connect_timeout=5"
        )

    def admin(self, db: str = "rave_webhook") -> psycopg.Connection:
        return psycopg.connect(self.dsn(db=db), autocommit=True)


@contextlib.contextmanager
def cluster() -> Iterator[Cluster]:
    bindir = _pg_bin()
    directory = Path(tempfile.mkdtemp(prefix="rave-pg-"))
    run_as = "postgres" if os.geteuid() == 0 else None
    if run_as:
        entry = pwd.getpwnam(run_as)
        os.chown(directory, entry.pw_uid, entry.pw_gid)
    pwfile = directory / "pw"
    pwfile.write_text(ADMIN_PASSWORD + "\n")
    if run_as:
        os.chown(pwfile, pwd.getpwnam(run_as).pw_uid, -1)
    result = Cluster(directory, free_port(), bindir, run_as)
    subprocess.run(
        result._cmd(
            str(bindir / "initdb"),
            "-D",
            str(directory / "data"),
            "-U",
            "postgres",
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "--no-sync",
        ),
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=120,
    )
    result.start()
    try:
        with psycopg.connect(result.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE rave_webhook LOGIN PASSWORD '{WRITER_PASSWORD}'")
            conn.execute("CREATE DATABASE rave_webhook")
            conn.execute("REVOKE CONNECT ON DATABASE rave_webhook FROM PUBLIC")
            conn.execute("GRANT CONNECT ON DATABASE rave_webhook TO rave_webhook")
        with result.admin() as conn:
            migrate.apply(conn, migrate.available())
        yield result
    finally:
        with contextlib.suppress(Exception):
            result.stop("immediate")
        shutil.rmtree(directory, ignore_errors=True)


def rows(pg: Cluster, where: str = "true", params: tuple[object, ...] = ()) -> int:
    with pg.admin() as conn:
        cursor = conn.execute(f"SELECT count(*) FROM webhook_events WHERE {where}", params)
        return int(cursor.fetchone()[0])  # type: ignore[index]


class Server:
    """The real app under uvicorn in a thread, on a free loopback port."""

    def __init__(self, config: Config, secrets: list[bytes]):
        self.config = config
        self.app = create_app(config, secrets)
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                host="127.0.0.1",
                port=config.listen_port,
                log_level="warning",
                access_log=False,
                lifespan="on",
                http="h11",
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.listen_port}"

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("webhook app did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def app_config(pg: Cluster, spool: Path, **overrides: object) -> Config:
    values: dict[str, object] = {
        "listen_port": free_port(),
        "spool_dir": str(spool),
        "db_port": pg.port,
        "db_password": WRITER_PASSWORD,
        "max_body_bytes": 65536,
    }
    values.update(overrides)
    return Config(**values)  # type: ignore[arg-type]


def github_headers(secret: bytes, body: bytes, delivery: str | None = None) -> dict[str, str]:
    signature = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": signature,
    }


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)
