"""Links planted by postgres in the directories root's backup works in (issue 17).

The WAL spool and the base backups are postgres's. A link postgres plants there (to a
root-only file in /root) must not reach a snapshot, and a point-in-time restore must never
give the link's target to postgres: it keeps its owner, mode and content. A snapshot that does
hold such a link (taken by hand here) is refused by the restore, naming the link, before
anything is changed.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from tests.host.test_backup import RB, backup, psql, run

SPOOL = "/var/lib/rave-backup/wal"
BASES = "/var/lib/rave-backup/base"
SECRET = "/root/rave-link-target"
SPOOL_LINK = f"{SPOOL}/rave-planted-link.gz"
LINKS_DB = "rave_links"


def _plant_secret(host) -> tuple[str, str]:
    run(host, f"umask 077 && echo 'root only' > {SECRET} && chown root:root {SECRET}")
    run(host, f"chmod 600 {SECRET}")
    return _owner_mode(host), run(host, f"sha256sum {SECRET}").stdout


def _owner_mode(host) -> str:
    return run(host, f"stat -c '%U:%G %a' {SECRET}").stdout.strip()


def _as_postgres(host, command: str):
    return run(host, f"runuser -u postgres -- {command}")


def _plant_links(host) -> list[str]:
    """As postgres: a link in the spool and one in every base backup to the root-only file."""
    links = [SPOOL_LINK]
    _as_postgres(host, f"ln -sfn {SECRET} {SPOOL_LINK}")
    labels = run(host, f"find {BASES} -mindepth 1 -maxdepth 1 -type d -printf '%f\\n'").stdout
    for label in labels.split():
        link = f"{BASES}/{label}/rave-planted-link"
        _as_postgres(host, f"ln -sfn {SECRET} {link}")
        links.append(link)
    return links


def _now(host) -> str:
    epoch = float(psql(host, "SELECT extract(epoch FROM clock_timestamp())"))
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def test_a_backup_and_point_in_time_restore_never_hand_a_linked_file_to_postgres(host):
    before, digest = _plant_secret(host)
    assert before == "root:root 600"
    links: list[str] = []
    try:
        backup(host)  # a base backup to restore from (one is taken when none exists)
        links = _plant_links(host)
        psql(host, f"DROP DATABASE IF EXISTS {LINKS_DB}")
        psql(host, f"CREATE DATABASE {LINKS_DB}")
        psql(host, "CREATE TABLE t (a int); INSERT INTO t VALUES (1), (2)", db=LINKS_DB)
        noted = _now(host)
        time.sleep(1.5)
        psql(host, "INSERT INTO t VALUES (3)", db=LINKS_DB)
        snapshot = backup(host)
        journal = run(host, "journalctl -u rave-backup.service -n 60 --no-pager -o cat").stdout
        assert _owner_mode(host) == before

        restored = run(host, f"{RB} restore --target-time {noted} --yes")
        # the old code chowned through the link: the file was postgres's after this restore
        assert _owner_mode(host) == before
        assert run(host, f"sha256sum {SECRET}").stdout == digest
        assert "RESTORED: snapshot" in restored.stdout
        assert psql(host, "SELECT count(*) FROM t", db=LINKS_DB).strip() == "2"
        # the backup left the links out of the snapshot, saying so
        assert f"{SPOOL_LINK} is a symbolic link: left out of the snapshot" in journal
        listing = run(host, f"{RB} ls --snapshot {snapshot}").stdout
        assert "rave-planted-link" not in listing
    finally:
        run(host, "rm -f " + " ".join([SPOOL_LINK, *links]))
        psql(host, f"DROP DATABASE IF EXISTS {LINKS_DB}")
        run(host, f"rm -f {SECRET}")


def test_a_restore_refuses_a_snapshot_holding_a_link_and_changes_nothing(host):
    """A snapshot taken by hand with restic (as an older release's backup would have taken
    it): the link is in it. The point-in-time restore stops naming the link."""
    before, digest = _plant_secret(host)
    config = json.loads(run(host, "cat /etc/rave/backup.json").stdout)
    restic = (
        f"restic -r {config['repository']} --password-file {config['password_file']} --no-cache"
    )
    snapshot_id = ""
    try:
        backup(host)
        _as_postgres(host, f"ln -sfn {SECRET} {SPOOL_LINK}")
        noted = _now(host)
        time.sleep(1.5)
        out = run(
            host,
            f"{restic} backup --json --host {config['hostname']} --tag rave {SPOOL} {BASES}",
        ).stdout
        summary = [json.loads(line) for line in out.splitlines() if '"summary"' in line][-1]
        snapshot_id = summary["snapshot_id"]
        listing = run(host, f"{RB} ls --snapshot {snapshot_id[:8]}").stdout
        assert SPOOL_LINK in listing

        for confirm in ("", " --yes"):
            refused = run(
                host,
                f"{RB} restore --target-time {noted} --snapshot {snapshot_id[:8]}{confirm}",
                expect=1,
            )
            assert f"{SPOOL_LINK} is a symbolic link" in refused.stderr, refused.stderr
            assert "refusing to hand the restored" in refused.stderr
            assert "RESTORED" not in refused.stdout
        assert _owner_mode(host) == before
        assert run(host, f"sha256sum {SECRET}").stdout == digest
        assert psql(host, "SELECT pg_is_in_recovery()").strip() == "f"
    finally:
        if snapshot_id:
            run(host, f"{restic} forget {snapshot_id}")
        run(host, f"rm -f {SPOOL_LINK} {SECRET}")
