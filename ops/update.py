"""Package updates on the host (one step of `rave-ops update`, which adds backup, snapshot,
validation and rollback around it; run it through rave-ops).

    security: unattended-upgrades now (Debian-Security origins only), then restart the
              services that still run code from replaced files
    minor:    every pending upgrade from the configured sources (no new or removed packages)
"""

from pyinfra.operations import server

from rave.deploykit import settings

# services whose running processes map files that an upgrade replaced (deleted on disk)
RESTART_STALE = r"""
for pid in $(ls /proc | grep -E '^[0-9]+$'); do
  grep -qs '(deleted)' /proc/$pid/maps 2>/dev/null || continue
  unit=$(ps -o unit= -p $pid 2>/dev/null | tr -d ' ')
  case "$unit" in *.service) echo "$unit";; esac
done | sort -u | grep -v -x -e ssh.service -e systemd-logind.service -e 'user@.*' \
  | while read -r unit; do echo "restart $unit"; systemctl try-restart "$unit"; done
"""

if settings().ops_update == "security":
    server.shell(
        name="Apply security updates now (unattended-upgrade)",
        commands=[
            "apt-get update -q",
            "command -v unattended-upgrade >/dev/null || "
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q unattended-upgrades",
            "unattended-upgrade -v",
        ],
    )
else:
    server.shell(
        name="Apply pending package upgrades",
        commands=[
            "apt-get update -q",
            "DEBIAN_FRONTEND=noninteractive apt-get -y -o Dpkg::Options::=--force-confold upgrade",
        ],
    )
server.shell(name="Restart services running replaced code", commands=[RESTART_STALE])
