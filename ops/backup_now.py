"""Back up now: start rave-backup.service, wait for it and print what it did.

pyinfra -y inventories/staging.py ops/backup_now.py
"""

from tasks.backup import run_op

run_op("Backup now", "now")
