"""Last step of a deploy: record what is deployed in /etc/rave/release.json.

The content has no timestamp, so a second deploy of the same checkout changes nothing; the
DeployedRelease and RaveMode facts (rave/facts.py) read it back.
"""

import json
import subprocess
from functools import cache
from pathlib import Path

from pyinfra.api import deploy

from rave.deploykit import put_text, settings
from rave.facts import RELEASE_FILE

REPO = Path(__file__).resolve().parents[1]


@cache
def git_state() -> tuple[str, bool]:
    """(commit, tracked files modified) of the checkout being deployed; 'unknown' without git."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        modified = (
            subprocess.run(
                ["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--"], capture_output=True
            ).returncode
            != 0
        )
        return commit, modified
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False


def release_text(commit: str, modified: bool, mode: str, environment: str) -> str:
    record = {"commit": commit, "modified": modified, "mode": mode, "environment": environment}
    return json.dumps(record, indent=2, sort_keys=True) + "\n"


@deploy("Release")
def release():
    config = settings()
    commit, modified = git_state()
    put_text(
        f"Record the deployed release {commit[:12]}{' (modified)' if modified else ''}",
        RELEASE_FILE,
        release_text(commit, modified, config.rave_mode.value, config.rave_environment),
    )
