"""Shell commands shown in docs/, extracted so tests can run them against staging.

Convention (docs/README.md): commands live in fenced ```console blocks, one per line,
`$ ` for the control machine (run from the repository root) and `host$ ` for the host
(run over SSH as the operator). A block fenced ```console prod needs a real production host
and is not run; every other fence language is not a command.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^```(\S*)(?:[ \t]+(\S+))?[ \t]*$")


@dataclass(frozen=True)
class DocCommand:
    source: str  # file:line, for failure messages
    where: str  # "control" or "host"
    command: str
    production_only: bool


def extract(path: Path, root: Path) -> list[DocCommand]:
    commands: list[DocCommand] = []
    language: str | None = None
    production_only = False
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = FENCE.match(line.strip())
        if match:
            if language is None:
                language, production_only = match.group(1), match.group(2) == "prod"
            else:
                language = None
            continue
        if language != "console":
            continue
        source = f"{path.relative_to(root)}:{number}"
        if line.startswith("$ "):
            commands.append(DocCommand(source, "control", line[2:].strip(), production_only))
        elif line.startswith("host$ "):
            commands.append(DocCommand(source, "host", line[6:].strip(), production_only))
    return commands


def all_commands(root: Path) -> list[DocCommand]:
    files = [*sorted((root / "docs").rglob("*.md")), root / "README.md"]
    return [command for path in files for command in extract(path, root)]
