"""Links planted by postgres in the directories root's backup works in (issue 17).

The dump directory and the pgBackRest repository are postgres's. A link postgres plants there
(to a root-only file in /root) must not reach a snapshot, and root must never give the link's
target to postgres when it re-owns a repository put back from a copy (`rave-backup stanza`):
the file keeps its owner, mode and content.
"""

from __future__ import annotations

from tests.host.test_backup import RB, backup, run

DUMP_DIR = "/var/lib/rave-backup/dump"
REPOSITORY = "/var/backups/rave/pgbackrest"
SECRET = "/root/rave-link-target"
DUMP_LINK = f"{DUMP_DIR}/rave-planted-link.dump"
REPOSITORY_LINK = f"{REPOSITORY}/rave-planted-link"


def _plant_secret(host) -> tuple[str, str]:
    run(host, f"umask 077 && echo 'root only' > {SECRET} && chown root:root {SECRET}")
    run(host, f"chmod 600 {SECRET}")
    return _owner_mode(host), run(host, f"sha256sum {SECRET}").stdout


def _owner_mode(host) -> str:
    return run(host, f"stat -c '%U:%G %a' {SECRET}").stdout.strip()


def _as_postgres(host, command: str):
    return run(host, f"runuser -u postgres -- {command}")


def test_a_backup_leaves_a_link_in_the_dump_directory_out(host):
    before, digest = _plant_secret(host)
    assert before == "root:root 600"
    try:
        backup(host)  # the dump directory exists (postgres's, 0700)
        _as_postgres(host, f"ln -sfn {SECRET} {DUMP_LINK}")
        # the dump (as postgres) clears its directory first: the link is removed, not followed
        # (it used to stat the link's target, and the backup failed with EACCES)
        snapshot = backup(host)
        assert not host.file(DUMP_LINK).exists and not host.file(DUMP_LINK).is_symlink
        assert "rave-planted-link" not in run(host, f"{RB} ls --snapshot {snapshot}").stdout
        assert _owner_mode(host) == before
        assert run(host, f"sha256sum {SECRET}").stdout == digest
    finally:
        run(host, f"rm -f {DUMP_LINK} {SECRET}")


def test_re_owning_a_repository_never_follows_a_link_in_it(host):
    """A repository put back from a copy may carry another host's uids: `rave-backup stanza`
    gives it to postgres, lchown'ing a link (pgBackRest's own `latest`, or a planted one)."""
    before, digest = _plant_secret(host)
    try:
        _as_postgres(host, f"ln -sfn {SECRET} {REPOSITORY_LINK}")
        run(host, f"chown root:root {REPOSITORY}")  # as a copy from another host would be
        run(host, f"{RB} stanza")
        assert run(host, f"stat -c %U {REPOSITORY}").stdout.strip() == "postgres"
        assert run(host, f"stat -c %U {REPOSITORY_LINK}").stdout.strip() == "postgres"
        assert _owner_mode(host) == before  # the link's target kept its owner and mode
        assert run(host, f"sha256sum {SECRET}").stdout == digest
        run(host, "runuser -u postgres -- /usr/local/sbin/rave-pgbackrest check")
    finally:
        run(host, f"rm -f {REPOSITORY_LINK} {SECRET}")
