"""The SSH part of the hardening task with an authorized_keys that lacks the deploy's key (a key
of nobody's, generated here): what validation would refuse, injected past it
(tests/host/test_ssh_access.py). The staged change must revert and leave the host reachable."""

from rave import hardening as h
from tasks.hardening import ssh_hardening

# a well-formed ed25519 public key whose private half nobody has
STRANGER = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHNpc3RlcmtleXNpc3RlcmtleXNpc3RlcmtleXNpc3Rl stranger"
)


def _stranger_only(settings):
    return f"{STRANGER}\n"


h.authorized_keys_text = _stranger_only
ssh_hardening()
