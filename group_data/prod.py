"""Production hosts. The operator fills these in before the first deploy (docs/DEPLOYMENT-GUIDE.md).

An empty operator_keys list (no secrets/prod.operator-keys) is refused before connecting: a host
must never be left without a key that can log in.
"""

from rave.secrets.operators import configured_keys

__all__ = ["operator_keys", "rave_environment", "rave_mode"]

rave_environment = "prod"
rave_mode = "SAFE"
# ssh-ed25519 public keys of the operators, one a line in secrets/prod.operator-keys
# ("ssh-ed25519 AAAAC3Nz... alice"); rotated with `rave-secrets operator-keys rotate`
operator_keys: list[str] = configured_keys("prod")
# Backups go off the host (docs/DEPLOYMENT-GUIDE.md, step 1): set the remote repository here,
# its credentials in the secrets. The local default is refused before connecting unless
# backup_local_repository_acknowledged = True stands next to it (BackupRepositoryOnHost fires).
# backup_repository = "sftp:backup@backup.example.org:/srv/restic/rave"
# Debug mode (verbose logs, docs/operations.md) stays off here. For a troubleshooting session:
# debug_mode = True together with debug_mode_acknowledged = True, in this file (DebugModeOn fires).
