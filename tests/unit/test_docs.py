"""The operator docs: parseable, commands in the convention, alerts and ports in the docs.

Convention (docs/README.md, rave/doccommands.py): commands in ```console blocks, each line
either `$ ` (control machine, repo root), `host$ ` (on the host) or output/comment text.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from rave import components
from rave.doccommands import FENCE, all_commands, extract

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
DOC_FILES = sorted(DOCS.rglob("*.md"))
REQUIRED = [
    "README.md",
    "ARCHITECTURE.md",
    "SECURITY.md",
    "RUNBOOK.md",
    "DEPLOYMENT-GUIDE.md",
    "TROUBLESHOOTING.md",
]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


def _blocks(path: Path) -> list[tuple[int, str, str, list[tuple[int, str]]]]:
    """(opening line, language, modifier, [(line number, text)]) of every fenced block."""
    blocks: list[tuple[int, str, str, list[tuple[int, str]]]] = []
    current: tuple[int, str, str, list[tuple[int, str]]] | None = None
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = FENCE.match(line.strip())
        if match:
            if current is None:
                current = (number, match.group(1), match.group(2) or "", [])
            else:
                blocks.append(current)
                current = None
            continue
        if current is not None:
            current[3].append((number, line))
    assert current is None, f"{path.relative_to(ROOT)}:{current[0]}: fenced block never closed"
    return blocks


@pytest.mark.parametrize("name", REQUIRED)
def test_required_doc_exists(name):
    path = DOCS / name
    assert path.is_file() and path.read_text().strip(), f"docs/{name} is missing or empty"


@pytest.mark.parametrize("path", DOC_FILES, ids=_ids(DOC_FILES))
def test_doc_parses(path):
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# "), f"{path.relative_to(ROOT)} must start with a '# ' title"
    blocks = _blocks(path)
    for opening, language, modifier, _ in blocks:
        where = f"{path.relative_to(ROOT)}:{opening}"
        if modifier:
            assert (language, modifier) == ("console", "prod"), (
                f"{where}: only ```console prod takes a modifier, not {language} {modifier}"
            )


@pytest.mark.parametrize("path", DOC_FILES, ids=_ids(DOC_FILES))
def test_console_lines_are_commands(path):
    """In a console block every line is a `$ ` or `host$ ` command (no output, no comments)."""
    bad = []
    for _, language, _, lines in _blocks(path):
        if language != "console":
            continue
        for number, line in lines:
            if line.startswith(("$ ", "host$ ")) and line.split("$ ", 1)[1].strip():
                continue
            bad.append(f"{path.relative_to(ROOT)}:{number}: {line!r}")
    assert not bad, "console lines must start with '$ ' or 'host$ ':\n" + "\n".join(bad)


@pytest.mark.parametrize("path", DOC_FILES, ids=_ids(DOC_FILES))
def test_no_shell_examples_outside_console_blocks(path):
    """Commands an operator types belong in console blocks: no ```sh/```bash/```shell fences."""
    bad = [
        f"{path.relative_to(ROOT)}:{opening}: ```{language}"
        for opening, language, _, _ in _blocks(path)
        if language in {"sh", "bash", "shell", "zsh"}
    ]
    assert not bad, "use ```console (or ```console prod) for commands:\n" + "\n".join(bad)


def test_commands_are_extracted():
    commands = all_commands(ROOT)
    assert any(c.where == "control" and not c.production_only for c in commands)
    assert any(c.where == "host" and not c.production_only for c in commands)
    assert any(c.production_only for c in commands)


def test_extract_follows_the_convention(tmp_path):
    (tmp_path / "docs").mkdir()
    doc = tmp_path / "docs" / "x.md"
    doc.write_text(
        "# x\n```console\n$ echo a\nhost$ echo b\n```\n```console prod\n$ echo c\n```\n"
        "```sh\n$ echo d\n```\n    $ echo e\n"
    )
    got = [(c.where, c.command, c.production_only, c.source) for c in extract(doc, tmp_path)]
    assert got == [
        ("control", "echo a", False, "docs/x.md:3"),
        ("host", "echo b", False, "docs/x.md:4"),
        ("control", "echo c", True, "docs/x.md:7"),
    ]


def _alert_names() -> list[str]:
    names = []
    for rules in sorted((ROOT / "files" / "prometheus" / "rules").glob("*.yml")):
        for group in yaml.safe_load(rules.read_text())["groups"]:
            names += [rule["alert"] for rule in group["rules"] if "alert" in rule]
    return names


def test_every_alert_is_in_the_runbook():
    runbook = (DOCS / "RUNBOOK.md").read_text()
    words = {
        word
        for line in runbook.splitlines()
        if line.startswith("#")
        for word in re.findall(r"\w+", line)
    }
    names = _alert_names()
    missing = [name for name in names if name not in words]
    assert not missing, f"alerts without a heading of their own in docs/RUNBOOK.md: {missing}"


def test_every_port_and_route_is_in_the_architecture():
    text = (DOCS / "ARCHITECTURE.md").read_text()
    missing = [
        f"{c.name}:{port.number}"
        for c in components.COMPONENTS
        for port in c.ports
        if not re.search(rf"(?<!\d){port.number}(?!\d)", text)
    ]
    missing += [f"route {route.path}" for route in components.routes() if route.path not in text]
    missing += [f"component {c.name}" for c in components.COMPONENTS if c.name not in text]
    assert not missing, f"docs/ARCHITECTURE.md does not mention: {missing}"


def test_architecture_has_one_mermaid_diagram():
    blocks = [b for b in _blocks(DOCS / "ARCHITECTURE.md") if b[1] == "mermaid"]
    assert len(blocks) == 1


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("path", DOC_FILES, ids=_ids(DOC_FILES))
def test_links_resolve(path):
    broken = []
    for target in LINK.findall(path.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part) if file_part else path
        missing_anchor = bool(anchor) and linked.suffix == ".md"
        if not linked.exists() or (missing_anchor and anchor not in _anchors(linked)):
            broken.append(target)
    assert not broken, f"{path.relative_to(ROOT)}: broken links {broken}"


def test_readme_indexes_every_doc():
    index = (DOCS / "README.md").read_text()
    missing = [
        str(p.relative_to(DOCS))
        for p in DOC_FILES
        if p.name != "README.md" and f"({p.relative_to(DOCS)})" not in index
    ]
    assert not missing, f"docs/README.md does not link: {missing}"


# Commands outside `console prod` run in the middle of the host test session
# (tests/host/test_docs_commands.py): none may destroy or reset state.
UNSAFE = re.compile(
    r"rave-staging\s+(up|down|reset|reboot)|backup_restore_confirm=true|backup_restore"
    r"|\brotate\b|recipients\s+remove|rave-secrets\s+init|\brm\s|\bsystemctl\s+(stop|restart|reload)\b"
    r"|rave-ops\s+(stop|restart|update)|bootstrap\.py|\breboot\b|\bpoweroff\b"
    r"|\bdeploy\.py\b(?!.*--dry)"
)


def test_tested_commands_are_safe():
    bad = [
        f"{c.source}: {c.command}"
        for c in all_commands(ROOT)
        if not c.production_only and UNSAFE.search(c.command)
    ]
    assert not bad, "destructive commands belong in ```console prod blocks:\n" + "\n".join(bad)


# a doc that names a file or a command that no longer exists says what is not true
REPO_PATH = re.compile(
    r"`((?:files|tasks|templates|tests|rave|ops|bench|group_data|inventories|docs)/[\w./-]+)`"
)
PLACEHOLDER = re.compile(r"NNNN|<|\*")


@pytest.mark.parametrize("path", [*DOC_FILES, ROOT / "README.md"], ids=lambda p: p.name)
def test_every_repository_path_a_doc_names_exists(path):
    named = {m.group(1) for m in REPO_PATH.finditer(path.read_text())}
    missing = [p for p in sorted(named) if not PLACEHOLDER.search(p) and not (ROOT / p).exists()]
    assert missing == [], f"{path.name} names what is not in the repository: {missing}"


def test_every_rave_ops_command_a_doc_names_exists():
    from rave.ops.cli import parser

    actions = [a for a in parser()._actions if getattr(a, "choices", None)]
    commands = set(actions[0].choices)
    named = {
        m.group(1)
        for path in [*DOC_FILES, ROOT / "README.md"]
        for m in re.finditer(r"rave-ops ([a-z][a-z-]*)", path.read_text())
    }
    assert named, "no rave-ops command found in the docs (the pattern is broken)"
    unknown = named - commands
    assert unknown == set(), f"docs name rave-ops commands that do not exist: {sorted(unknown)}"


CHECKLIST = DOCS / "CHECKLIST.md"
SPAN = re.compile(r"`([^`]+)`")


def _proof_problem(span: str) -> str | None:
    """None when `span` names something real: a repository file (with `::test` a test function
    in it), a `make` target, or a command of the venv; otherwise why not. Other spans (a
    setting's or an alert's name) are not proofs: None is returned for them too, but they do
    not count as one (see _is_proof)."""
    path, _, test = span.partition("::")
    if REPO_PATH.fullmatch(f"`{path}`") and not PLACEHOLDER.search(path):
        if not (ROOT / path).is_file():
            return f"{path} does not exist"
        if test and not re.search(rf"^def {re.escape(test)}\(", (ROOT / path).read_text(), re.M):
            return f"{path} has no test {test}"
        return None
    if span.startswith("make "):
        target = span.split()[1]
        makefile = (ROOT / "Makefile").read_text()
        return None if re.search(rf"^{re.escape(target)}:", makefile, re.M) else f"no make {target}"
    if span.startswith(".venv/bin/"):
        program = span.split()[0].removeprefix(".venv/bin/")
        scripts = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
        if program not in scripts | {"pyinfra", "pytest"}:
            return f"{program} is not a command of the venv"
        for word in span.split()[1:]:  # the ops/*.py run or the deploy it names must exist
            named = re.fullmatch(r"(ops|inventories)/[\w./-]+\.py|deploy\.py", word)
            if named and not (ROOT / word).is_file():
                return f"{word} does not exist"
        return None
    return None


def _is_proof(span: str) -> bool:
    return bool(
        REPO_PATH.fullmatch(f"`{span.partition('::')[0]}`")
        or span.startswith(("make ", ".venv/bin/"))
    )


def test_every_checklist_line_names_its_proof():
    """Each item of docs/CHECKLIST.md names a test, file, make target or command that exists:
    a checklist item nothing proves is a wish."""
    items = [line for line in CHECKLIST.read_text().splitlines() if line.startswith("- [ ] ")]
    assert len(items) >= 20, "docs/CHECKLIST.md lost its items (or their `- [ ] ` form)"
    problems = []
    for item in items:
        spans = SPAN.findall(item)
        if not any(_is_proof(span) for span in spans):
            problems.append(f"names no proof: {item[:80]}")
        problems += [f"{p}: {item[:60]}" for s in spans if (p := _proof_problem(s))]
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize(
    ("span", "problem"),
    [
        ("tests/host/test_gone.py", "tests/host/test_gone.py does not exist"),
        ("tests/host/test_edge.py::test_no_such_test", "has no test test_no_such_test"),
        ("make no-such-target", "no make no-such-target"),
        (".venv/bin/rave-nothing status", "rave-nothing is not a command of the venv"),
        (".venv/bin/pyinfra -y inventories/staging.py ops/gone.py", "ops/gone.py does not exist"),
    ],
)
def test_a_checklist_proof_that_does_not_exist_is_named(span, problem):
    assert problem in (_proof_problem(span) or "")
