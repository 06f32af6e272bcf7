"""Only the firewall part of the hardening task (run by tests/host/test_hardening.py)."""

from tasks.hardening import firewall

firewall()
