"""Restore from a snapshot: the databases alone, or the whole host (project files, the encrypted
secrets file, the SSH host keys, roles and databases), then restart what depends on them.

Without backup_restore_confirm=true it only prints the plan (after checking the password and
reading the snapshot). On a fresh host: deploy.py first, then this with scope=host.

    pyinfra -y inventories/staging.py ops/backup_restore.py \\
        --data backup_restore_scope=database|host --data backup_snapshot=latest|<id> \\
        --data backup_restore_confirm=true
"""

from rave.deploykit import settings
from tasks.backup import run_op

s = settings()
args = ["--scope", s.backup_restore_scope, "--snapshot", s.backup_snapshot]
if s.backup_restore_confirm:
    args.append("--yes")
run_op(f"Restore {s.backup_restore_scope} from snapshot {s.backup_snapshot}", "restore", *args)
