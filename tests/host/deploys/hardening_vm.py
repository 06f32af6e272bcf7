"""Base and hardening only: what tests/vm/test_vm_hardening.py deploys to the staging VM."""

from tasks.base import base
from tasks.hardening import hardening

base()  # apt's egress proxy first
hardening()
