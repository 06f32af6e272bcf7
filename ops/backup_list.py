"""List the snapshots of each host in its restic repository.

pyinfra -y inventories/staging.py ops/backup_list.py
"""

from tasks.backup import run_op

run_op("List backup snapshots", "list")
