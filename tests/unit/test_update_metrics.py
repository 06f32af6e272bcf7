"""files/updates/rave-update-metrics: reboot required and pending restarts as textfile metrics."""

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "files" / "updates" / "rave-update-metrics"

BATCH = """NEEDRESTART-VER: 3.6
NEEDRESTART-KCUR: 6.1.0-18-amd64
NEEDRESTART-KEXP: 6.1.0-18-amd64
NEEDRESTART-KSTA: 1
NEEDRESTART-SVC: nginx.service
NEEDRESTART-SVC: postgresql@15-main.service
"""


def _load():
    loader = importlib.machinery.SourceFileLoader("rave_update_metrics", str(SCRIPT))
    spec = importlib.util.spec_from_loader("rave_update_metrics", loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules["rave_update_metrics"] = module
    loader.exec_module(module)
    return module


um = _load()


def _fake_needrestart(tmp_path: Path, output: str, status: int = 0) -> Path:
    (tmp_path / "out.txt").write_text(output)
    fake = tmp_path / "needrestart"
    fake.write_text(
        f'#!/bin/sh\n[ "$*" = "-b -r l" ] || exit 9\ncat {tmp_path}/out.txt\nexit {status}\n'
    )
    fake.chmod(0o755)
    return fake


def _metrics(directory: Path) -> dict[str, float]:
    text = (directory / "rave_updates.prom").read_text()
    return {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_services_are_the_svc_lines_of_batch_output():
    assert um.pending_services(BATCH) == ["nginx.service", "postgresql@15-main.service"]
    assert um.pending_services("NEEDRESTART-VER: 3.6\n") == []


def test_reboot_file_and_pending_services_become_metrics(tmp_path):
    reboot = tmp_path / "reboot-required"
    args = ["--textfile-dir", str(tmp_path / "prom"), "--reboot-file", str(reboot)]
    fake = _fake_needrestart(tmp_path, BATCH)
    assert um.main([*args, "--needrestart", str(fake)]) == 0
    metrics = _metrics(tmp_path / "prom")
    assert metrics["rave_reboot_required"] == 0
    assert metrics["rave_restart_pending"] == 2
    assert metrics["rave_update_metrics_ok"] == 1

    reboot.write_text("*** System restart required ***\n")
    _fake_needrestart(tmp_path, "NEEDRESTART-VER: 3.6\n")
    assert um.main([*args, "--needrestart", str(fake)]) == 0
    metrics = _metrics(tmp_path / "prom")
    assert metrics["rave_reboot_required"] == 1
    assert metrics["rave_restart_pending"] == 0


def test_needrestart_failing_is_reported_not_hidden_as_zero(tmp_path):
    args = ["--textfile-dir", str(tmp_path), "--reboot-file", str(tmp_path / "none")]
    assert um.main([*args, "--needrestart", str(tmp_path / "missing")]) == 1
    metrics = _metrics(tmp_path)
    assert "rave_restart_pending" not in metrics
    assert metrics["rave_update_metrics_ok"] == 0
    assert metrics["rave_reboot_required"] == 0
    fake = _fake_needrestart(tmp_path, BATCH, status=3)
    assert um.main([*args, "--needrestart", str(fake)]) == 1
    assert "rave_restart_pending" not in _metrics(tmp_path)
