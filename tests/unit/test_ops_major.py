"""Major update scripts (rave/ops/major.py): valid sh, and save/restore really put a tree back."""

import json
import os
import shutil
import subprocess

import pytest

from rave.ops import major
from rave.settings import HostSettings
from tests.tools import require_tool

SOFTWARE = major.Software(
    component="ccr",
    unit="rave-ccr",
    port=3456,
    tree="/opt/rave/ccr",
    version_file="/opt/rave/ccr/node_modules/x/package.json",
)


@pytest.mark.parametrize(
    "script",
    [
        major.save_script(SOFTWARE),
        major.settle_script(SOFTWARE, 5),
        major.restore_script(SOFTWARE),
        major.discard_script(SOFTWARE),
    ],
)
def test_scripts_are_valid_posix_sh(script):
    shell = require_tool("dash")  # Debian's /bin/sh
    result = subprocess.run([shell, "-n"], input=script, text=True, capture_output=True)
    assert result.returncode == 0, result.stderr


def test_automated_components_name_real_settings():
    for setting in major.AUTOMATED.values():
        assert setting in HostSettings.model_fields
    assert not set(major.AUTOMATED) & set(major.RUNBOOKS)


def _install(tree, version):
    package = tree / "node_modules/x/package.json"
    package.parent.mkdir(parents=True, exist_ok=True)
    package.write_text(json.dumps({"version": version}))


@pytest.fixture
def fake_host(tmp_path):
    """A software tree in tmp_path and a systemctl that only logs what it was asked."""
    tree = tmp_path / "opt/rave/ccr"
    _install(tree, "1.0.73")
    (tree / "dist.js").write_text("old")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/systemctl.log\n')
    (bin_dir / "systemctl").chmod(0o755)
    software = major.Software(
        component="ccr",
        unit="rave-ccr",
        port=3456,
        tree=str(tree),
        version_file=str(tree / "node_modules/x/package.json"),
    )
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def run(script):
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env)

    return tmp_path, tree, software, run


def test_save_then_restore_puts_the_old_version_back(fake_host):
    tmp_path, tree, software, run = fake_host
    saves = str(tmp_path / "saves")
    saved = run(major.save_script(software, saves))
    assert saved.returncode == 0, saved.stderr
    assert "(ccr 1.0.73," in saved.stdout
    # the update: new version, a changed file, a new file
    _install(tree, "3.1.1")
    (tree / "dist.js").write_text("new")
    (tree / "added.js").write_text("only in the new version")
    restored = run(major.restore_script(software, saves))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert "ccr version 1.0.73 (before the update: 1.0.73)" in restored.stdout
    assert (tree / "dist.js").read_text() == "old"
    assert not (tree / "added.js").exists()
    log = (tmp_path / "systemctl.log").read_text().splitlines()
    assert log[0] == "stop rave-ccr" and log[-1] == "start rave-ccr"
    assert not (tmp_path / "saves/ccr").exists()  # put back: the copy is dropped


def test_discard_drops_the_saved_tree(fake_host):
    tmp_path, tree, software, run = fake_host
    saves = str(tmp_path / "saves")
    assert run(major.save_script(software, saves)).returncode == 0
    assert (tmp_path / "saves/ccr/tree.tar").exists()
    assert run(major.discard_script(software, saves)).returncode == 0
    assert not (tmp_path / "saves/ccr").exists()
    assert (tree / "dist.js").read_text() == "old"


def test_save_refuses_when_the_component_is_not_installed(fake_host):
    tmp_path, tree, software, run = fake_host
    shutil.rmtree(tree)
    saved = run(major.save_script(software, str(tmp_path / "saves")))
    assert saved.returncode == 1
    assert "ccr is not installed here" in saved.stdout


def test_restore_without_a_saved_tree_fails_and_touches_nothing(fake_host):
    tmp_path, tree, software, run = fake_host
    restored = run(major.restore_script(software, str(tmp_path / "saves")))
    assert restored.returncode == 1
    assert "no saved ccr" in restored.stdout
    assert (tree / "dist.js").read_text() == "old"
