"""mypy and ruff see all the Python the project ships, the host programs without a .py too."""

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
NOT_SHIPPED = ("tests", ".venv", ".staging", ".lock-venv")


def _is_python(path: Path) -> bool:
    if path.suffix == ".py":
        return True
    with path.open("rb") as handle:
        first = handle.readline()
    return first.startswith(b"#!") and b"python" in first


def _shipped_python() -> list[Path]:
    return sorted(
        path
        for path in REPO.rglob("*")
        if path.is_file()
        and not path.relative_to(REPO).parts[0].startswith(NOT_SHIPPED)
        and not any(part.startswith(".") for part in path.relative_to(REPO).parts)
        and _is_python(path)
    )


def _covered(path: Path, entries: list[str]) -> bool:
    relative = path.relative_to(REPO)
    return any(relative == Path(e) or Path(e) in relative.parents for e in entries)


def _mypy_entries() -> list[str]:
    """pyproject.toml's [tool.mypy] files, plus the directories `make typecheck` adds."""
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^typecheck:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe, "Makefile: no typecheck target"
    runs = [line.split()[1:] for line in recipe.group(1).splitlines() if "mypy" in line]
    assert [] in runs, "`make typecheck` must run plain `mypy` (pyproject.toml's files)"
    return [*PYPROJECT["tool"]["mypy"]["files"], *(arg for run in runs for arg in run)]


def test_the_host_programs_are_found():
    found = {str(p.relative_to(REPO)) for p in _shipped_python()}
    assert {"files/ops/rave-validate-host", "files/backup/rave_backup.py", "deploy.py"} <= found
    assert "tests/unit/test_checked_python.py" not in found


def test_mypy_checks_every_python_file_the_project_ships():
    entries = _mypy_entries()
    missing = [str(p.relative_to(REPO)) for p in _shipped_python() if not _covered(p, entries)]
    assert missing == [], "add to pyproject.toml [tool.mypy] files"


def test_ruff_checks_every_python_file_the_project_ships():
    """ruff finds *.py itself; a program without the suffix must be in extend-include."""
    included = PYPROJECT["tool"]["ruff"]["extend-include"]
    missing = [
        str(p.relative_to(REPO))
        for p in _shipped_python()
        if p.suffix != ".py" and str(p.relative_to(REPO)) not in included
    ]
    assert missing == [], "add to pyproject.toml [tool.ruff] extend-include"
    for entry in included:
        assert _is_python(REPO / entry), f"{entry} is not a Python program"
