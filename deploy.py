"""RAVE production host: the table of contents. Each step is one task module under tasks/."""

from tasks.base import base
from tasks.release import release

base()
release()  # last: records what is deployed (/etc/rave/release.json)
