"""Only the SSH part of the hardening task (tests/host/test_hardening.py runs it with --data)."""

from tasks.hardening import ssh_hardening

ssh_hardening()
