"""Production hosts. The operator fills these in before the first deploy (docs/DEPLOYMENT-GUIDE.md).

An empty operator_keys list is refused before connecting: a host must never be left without a
key that can log in.
"""

__all__ = ["operator_keys", "rave_environment", "rave_mode"]

rave_environment = "prod"
rave_mode = "SAFE"
# ssh-ed25519 public keys of the operators, e.g. "ssh-ed25519 AAAAC3Nz... alice@laptop"
operator_keys: list[str] = []
