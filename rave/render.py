"""Render templates/ from validated models only (StrictUndefined: a missing value is an error)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = REPO_ROOT / "templates"
FILES = REPO_ROOT / "files"

_environment = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATES)),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)


def render(template: str, **context: Any) -> str:
    return _environment.get_template(template).render(**context)


def all_templates() -> list[str]:
    return sorted(_environment.list_templates(filter_func=lambda name: name.endswith(".j2")))
