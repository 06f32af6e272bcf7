"""What the tests need from the machine, and what happens when it is not there.

CI (.ci/run) runs as root on Debian 12 and installs the Makefile's SYSTEM_PACKAGES (`make
system-deps`). A tool one of those packages provides is never a reason to skip: its absence
fails the test, naming the package. What a developer's machine may really lack (a network
namespace, a tmpfs, root) skips there and fails in CI, which exports CI=1.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

# tool -> the Debian package that provides it: one of the Makefile's SYSTEM_PACKAGES, or an
# Essential package (ESSENTIAL), on every Debian machine (tests/unit/test_tools.py checks)
TOOLS = {
    "age": "age",
    "curl": "curl",
    "dash": "dash",
    "dpkg": "dpkg",
    "gpg": "gpg",
    "nft": "nftables",
    "promtool": "prometheus",
    "restic": "restic",
    "systemd-analyze": "systemd",
    "ssh-keygen": "openssh-client",
    "unshare": "util-linux",
}
ESSENTIAL = frozenset({"dash", "dpkg", "util-linux"})


def require_tool(name: str) -> str:
    """The tool's path; the test fails (never skips) when it is missing."""
    package = TOOLS[name]  # a KeyError: add the tool to TOOLS, with its package
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is missing: install the Debian package {package} "
            "(`make system-deps` installs the Makefile's SYSTEM_PACKAGES)",
            pytrace=False,
        )
    return path


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def cannot_run_here(reason: str) -> NoReturn:
    """The machine lacks a capability (not a tool): skip on a developer's machine, fail in CI."""
    if in_ci():
        pytest.fail(f"{reason}: CI runs as root on Debian 12, where this must work", pytrace=False)
    pytest.skip(reason)
