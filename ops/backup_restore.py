"""Restore from a snapshot: the databases alone (from the snapshot's dumps), or the whole host
(project files, the encrypted secrets file, the SSH host keys from the snapshot; the PostgreSQL
cluster from pgBackRest up to the last pushed WAL), then restart what depends on them.

With backup_restore_target_time pgBackRest restores the cluster to that point in time: the
newest pgBackRest backup finished before it, then the archived WAL replayed up to it.

Without backup_restore_confirm=true it only prints the plan (after checking the password and
reading the snapshot). On a fresh host: deploy.py first, then this with scope=host.

    pyinfra -y inventories/staging.py ops/backup_restore.py \\
        --data backup_restore_scope=database|host --data backup_snapshot=latest|<id> \\
        [--data backup_restore_target_time=2026-12-06T15:04:05+00:00] \\
        --data backup_restore_confirm=true
"""

from rave.deploykit import settings
from tasks.backup import run_op

s = settings()
args = ["--scope", s.backup_restore_scope, "--snapshot", s.backup_snapshot]
what = f"snapshot {s.backup_snapshot}"
if s.backup_restore_target_time:
    args += ["--target-time", s.backup_restore_target_time]
    what = f"point in time {s.backup_restore_target_time}"
if s.backup_restore_confirm:
    args.append("--yes")
run_op(f"Restore {s.backup_restore_scope} to {what}", "restore", *args)
