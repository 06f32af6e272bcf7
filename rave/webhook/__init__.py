"""The RAVE webhook receiver: verify, spool durably, drain to PostgreSQL.

This package runs on the host from Debian's python3-* packages (starlette, uvicorn, psycopg,
prometheus-client) and is shipped there as /opt/rave/lib/rave_webhook: it imports nothing
from the rest of `rave` and uses relative imports only.
"""
