"""The SSH part of the hardening task with an sshd_config that passes `sshd -t` but admits no
operator (AllowGroups of a group nobody is in): what validation would refuse, injected past it
(tests/host/test_ssh_access.py). The staged change must revert and leave the host reachable."""

import re

from rave import hardening as h
from tasks.hardening import ssh_hardening

_real = h.sshd_config_text


def _locked_out(settings):
    return re.sub(r"(?m)^AllowGroups .*$", "AllowGroups rave-nobody", _real(settings))


h.sshd_config_text = _locked_out
ssh_hardening()
