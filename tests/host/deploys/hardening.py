"""The whole hardening task (tests/host/test_hardening.py reruns it on a host it has changed)."""

from tasks.hardening import hardening

hardening()
