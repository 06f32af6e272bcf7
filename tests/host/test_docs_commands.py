"""Every command shown in docs/ (outside ```console prod blocks) works on the staging host.

`$ ` lines run on the control machine from the repository root (RAVE_STAGING_ID of this
session, so `inventories/staging.py` is this session's hosts); `host$ ` lines run over SSH as
the operator on the first staging host. Each must exit 0 within its timeout. The docs only put
read-only or idempotent commands outside `console prod` (tests/unit/test_docs.py checks the
obvious destructive ones), so this file may run in the middle of the session; its name sorts
before test_zz_idempotency.py and it changes no deploy state.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from rave.doccommands import DocCommand, all_commands

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 600  # seconds; drift (a dry-run deploy) and backup verify are the slow ones
# the same command shown in several places runs once; a failure names every place
UNIQUE: dict[tuple[str, str], list[DocCommand]] = {}
for _command in all_commands(REPO):
    if not _command.production_only:
        UNIQUE.setdefault((_command.where, _command.command), []).append(_command)
COMMANDS = [shown[0] for shown in UNIQUE.values()]


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.mark.parametrize("doc", COMMANDS, ids=[f"{c.source} {c.command}" for c in COMMANDS])
def test_doc_command_works_on_staging(staging, doc: DocCommand):
    sources = ", ".join(c.source for c in UNIQUE[(doc.where, doc.command)])
    where = f"{sources}: `{doc.command}`"
    try:
        if doc.where == "control":
            result = subprocess.run(
                ["bash", "-c", doc.command],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        else:
            result = staging.ssh(staging.names[0], doc.command, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{where} did not finish within {TIMEOUT} s", pytrace=False)
    assert result.returncode == 0, (
        f"{where} ({doc.where}) exited {result.returncode}\n"
        f"--- stdout\n{_tail(result.stdout)}\n--- stderr\n{_tail(result.stderr)}"
    )
