"""Verify a snapshot by a real restore: `restic check`, then each database dump restored into a
scratch database and compared table by table (row counts, content checksums) with the values
taken at backup time and with the live database.

    pyinfra -y inventories/staging.py ops/backup_verify.py [--data backup_snapshot=<id>]
        [--data backup_verify_strict_live=true]   # also fail if the live DB changed since
"""

from rave.deploykit import settings
from tasks.backup import run_op

s = settings()
args = ["--snapshot", s.backup_snapshot]
if s.backup_verify_strict_live:
    args.append("--strict-live")
run_op(f"Verify backup snapshot {s.backup_snapshot}", "verify", *args)
