"""The snapshot/restore shell scripts (rave/ops/snapshot.py): valid sh, complete coverage."""

import subprocess

import pytest

from rave.ops import snapshot
from tests.tools import require_tool


@pytest.mark.parametrize("script", [snapshot.take_script(), snapshot.restore_script()])
def test_scripts_are_valid_posix_sh(script):
    shell = require_tool("dash")  # Debian's /bin/sh
    result = subprocess.run([shell, "-n"], input=script, text=True, capture_output=True)
    assert result.returncode == 0, result.stderr


def test_restore_actions_cover_units_and_services():
    script = snapshot.restore_script()
    assert "systemctl daemon-reload" in script
    assert "nginx -t" in script and "sshd -t" in script and "nft -c -f" in script
    assert "--allow-downgrades" in script


def test_managed_paths_include_what_the_deploy_writes():
    managed = ("etc/nginx", "etc/systemd/system", "etc/rave", "etc/rave-ccr", "etc/ssh")
    for path in (*managed, "etc/nftables.conf"):
        assert path in snapshot.MANAGED_PATHS


def case_arm_output(path):
    """Run the restore script's case statement alone on one path."""
    script = f'p={path}\ncase "$p" in\n{snapshot._case_arms()}\nesac\n'
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True).stdout.split("\n")


def test_case_arms_map_paths_to_actions():
    out = case_arm_output("etc/systemd/system/rave-webhook.service.d/limits.conf")
    assert "0 daemon-reload" in out and "3 restart rave-webhook.service" in out
    assert case_arm_output("etc/nginx/sites-enabled/rave")[0] == "2 restart nginx"
    assert case_arm_output("etc/rave-ccr/settings.json")[0] == "2 restart rave-ccr"
    assert case_arm_output("etc/prometheus/alertmanager.yml")[0] == (
        "2 restart prometheus-alertmanager"
    )
    assert case_arm_output("etc/default/prometheus-node-exporter")[0] == (
        "2 restart prometheus-node-exporter"
    )
    wants = case_arm_output("etc/systemd/system/multi-user.target.wants/nginx.service")
    assert wants[0] == "0 daemon-reload" and not any("restart" in line for line in wants)
