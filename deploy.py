"""RAVE production host: the table of contents. Each step is one task module under tasks/."""

from tasks.backup import backup
from tasks.base import base
from tasks.ccr import ccr
from tasks.database import database
from tasks.edge import edge
from tasks.hardening import hardening
from tasks.observability import observability
from tasks.secrets import secrets
from tasks.vulnscan import vulnscan
from tasks.webhook import webhook

base()
hardening()
secrets()
database()
edge()
webhook()
ccr()
observability()
backup()
vulnscan()
