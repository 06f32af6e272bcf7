"""RAVE production host: the table of contents. Each step is one task module under tasks/."""

from rave.deploykit import settings
from tasks.base import base
from tasks.database import database
from tasks.edge import edge
from tasks.hardening import hardening
from tasks.observability import observability
from tasks.secrets import secrets
from tasks.webhook import webhook

base()
hardening()
secrets()
if not settings().monitoring_role:  # a monitoring host runs no service (rave/topology.py)
    database()
    edge()
    webhook()
observability()
