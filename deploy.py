"""RAVE production host: the table of contents. Each step is one task module under tasks/."""

from rave.deploykit import settings
from tasks.backup import backup
from tasks.base import base
from tasks.ccr import ccr
from tasks.database import database
from tasks.edge import edge
from tasks.hardening import hardening
from tasks.observability import observability
from tasks.ops import ops
from tasks.release import release
from tasks.secrets import secrets
from tasks.vulnscan import vulnscan
from tasks.webhook import webhook

base()
hardening()
secrets()
if not settings().monitoring_role:  # a monitoring host runs no service (rave/topology.py)
    database()
    edge()
    webhook()
    ccr()
observability()
backup()
vulnscan()
ops()  # scheduled host-side validation (rave-validate.timer)
release()  # last: records what is deployed (/etc/rave/release.json)
