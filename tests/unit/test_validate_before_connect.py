"""The pyinfra CLI refuses invalid host data before it connects to (or changes) anything."""

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).with_name("pyinfra")


def _project(tmp_path: Path, all_py: str) -> Path:
    shutil.copy(REPO / "config.py", tmp_path / "config.py")
    (tmp_path / "group_data").mkdir()
    (tmp_path / "group_data" / "all.py").write_text(all_py)
    (tmp_path / "inventory.py").write_text('rave = ["@local"]\n')
    return tmp_path


def _run(project: Path, *extra: str) -> subprocess.CompletedProcess:
    marker = project / "touched"
    return subprocess.run(
        [str(PYINFRA), "-y", "inventory.py", *extra, "exec", "--", "touch", str(marker)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEEXAMPLEEXAMPLEEXAMPLEEXAMPLEEXAMPLEx a@b"


def test_bad_group_data_stops_the_run_naming_field_and_file(tmp_path):
    project = _project(tmp_path, f'operator_keys = ["{KEY}"]\nrave_mode = "TURBO"\n')
    result = _run(project)
    assert result.returncode != 0
    assert "rave_mode" in result.stderr
    assert "group_data/all.py" in result.stderr
    assert "@local" in result.stderr
    assert not (project / "touched").exists(), "the host was touched despite invalid data"


def test_bad_command_line_data_is_named(tmp_path):
    project = _project(tmp_path, f'operator_keys = ["{KEY}"]\n')
    result = _run(project, "--data", "timezone=Nowhere/Land")
    assert result.returncode != 0
    assert "timezone" in result.stderr
    assert "command line --data" in result.stderr
    assert not (project / "touched").exists()


def test_valid_data_runs(tmp_path):
    project = _project(tmp_path, f'operator_keys = ["{KEY}"]\nhostname = "local-test"\n')
    result = _run(project)
    assert result.returncode == 0, result.stderr
    assert (project / "touched").exists()
