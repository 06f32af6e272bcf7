"""RAVE production host: the table of contents. Each step is one task module under tasks/."""

from tasks.base import base
from tasks.hardening import hardening
from tasks.secrets import secrets

base()
hardening()
secrets()
