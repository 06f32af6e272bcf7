"""tests/tools.py: a tool CI installs is required (a failure), never a reason to skip."""

import re
import subprocess
from pathlib import Path

import pytest

from tests import tools

REPO = Path(__file__).resolve().parents[2]


def _system_packages() -> set[str]:
    text = (REPO / "Makefile").read_text()
    match = re.search(r"^SYSTEM_PACKAGES := ((?:.*\\\n)*.*)$", text, re.M)
    assert match, "Makefile: SYSTEM_PACKAGES not found"
    return set(match.group(1).replace("\\\n", " ").split())


def test_every_tool_comes_from_a_package_ci_installs():
    packages = _system_packages()
    assert {"prometheus", "age", "nftables", "openssh-client"} <= packages
    for tool, package in tools.TOOLS.items():
        assert package in packages | tools.ESSENTIAL, f"{tool}: {package} is not installed by CI"


@pytest.mark.parametrize("package", sorted(tools.ESSENTIAL))
def test_the_essential_packages_are_essential(package):
    essential = subprocess.run(
        ["dpkg-query", "-W", "-f=${Essential}", package], capture_output=True, text=True
    )
    assert essential.stdout == "yes", f"{package} is not Essential: list it in SYSTEM_PACKAGES"


def test_a_missing_tool_fails_the_test(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match=r"promtool is missing: .* prometheus"):
        tools.require_tool("promtool")


def test_an_unknown_tool_must_be_declared():
    with pytest.raises(KeyError):
        tools.require_tool("no-such-tool")


def test_a_missing_capability_skips_outside_ci_and_fails_in_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        tools.cannot_run_here("no tmpfs")
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="no tmpfs"):
        tools.cannot_run_here("no tmpfs")


def test_ci_exports_ci():
    assert re.search(r"^export CI=1\b", (REPO / ".ci" / "run").read_text(), re.M)


def test_no_test_looks_for_a_tool_or_a_module_itself():
    """A tool through require_tool; a module is imported (an ImportError is a failure)."""
    offenders = [
        f"{path.relative_to(REPO)}: {pattern}"
        for path in sorted((REPO / "tests").rglob("*.py"))
        if path != REPO / "tests" / "tools.py" and path != Path(__file__).resolve()
        for pattern in ("shutil.which(", "importorskip(")
        if pattern in path.read_text()
    ]
    assert offenders == []
