"""Facts and decisions of the hardening task (parsing, what to apply, what to report)."""

import json
import subprocess

from rave import hardening as h


def test_sysctl_state_parses_values_modes_and_missing_keys():
    fact = h.SysctlState()
    state = fact.process(
        [
            "net.ipv4.ip_forward|rw|0",
            "kernel.sysrq|ro|438",
            "kernel.yama.ptrace_scope|missing|",
            "net.ipv4.ip_local_port_range|rw|32768  60999",
        ]
    )
    assert state["net.ipv4.ip_forward"] == h.SysctlValue("0", True)
    assert state["kernel.sysrq"] == h.SysctlValue("438", False)
    assert state["kernel.yama.ptrace_scope"] == h.SysctlValue(None, False)
    assert state["net.ipv4.ip_local_port_range"].value == "32768 60999"


def test_plan_applies_writable_and_reports_the_rest():
    desired = {
        "net.ipv4.ip_forward": "0",
        "net.ipv4.tcp_syncookies": "1",
        "kernel.sysrq": "0",
        "kernel.yama.ptrace_scope": "2",
        "fs.protected_fifos": "2",
    }
    state = {
        "net.ipv4.ip_forward": h.SysctlValue("1", True),  # apply
        "net.ipv4.tcp_syncookies": h.SysctlValue("1", True),  # already right
        "kernel.sysrq": h.SysctlValue("438", False),  # read-only: report
        "kernel.yama.ptrace_scope": h.SysctlValue(None, False),  # missing: report
        "fs.protected_fifos": h.SysctlValue("2", False),  # read-only but right: nothing
    }
    plan = h.plan_sysctl(desired, state)
    assert plan.apply == {"net.ipv4.ip_forward": "0"}
    assert set(plan.unsettable) == {"kernel.sysrq", "kernel.yama.ptrace_scope"}
    assert plan.unsettable["kernel.sysrq"] == {
        "desired": "0",
        "actual": "438",
        "reason": "read-only here",
    }
    assert plan.unsettable["kernel.yama.ptrace_scope"]["reason"] == "no such key on this kernel"


def test_second_plan_is_empty_once_applied():
    desired = {"net.ipv4.ip_forward": "0"}
    assert h.plan_sysctl(desired, {"net.ipv4.ip_forward": h.SysctlValue("0", True)}).apply == {}


def test_report_is_stable_json():
    report = {"virtualization": "systemd-nspawn", "exceptions": {"b": 1, "a": 2}}
    text = h.report_text(report)
    assert text == h.report_text(dict(reversed(list(report.items()))))
    assert json.loads(text) == report


def test_simple_fact_parsers():
    assert h.ContainerVirt().process(["systemd-nspawn"]) == "systemd-nspawn"
    assert h.ContainerVirt().process([""]) == "none"
    assert h.NftRaveMarker().process([]) is None
    assert h.NftRaveMarker().process(["rave-sha256:ab"]) == "rave-sha256:ab"
    assert h.ShortModuli().process(["12"]) == 12
    assert h.MountOptions().process(["rw,nosuid,nodev"]) == ["rw", "nosuid", "nodev"]
    assert h.MountOptions().process([]) is None
    assert h.UnitActive().process(["inactive disabled"]) == {
        "active": "inactive",
        "enabled": "disabled",
    }
    assert h.AppArmorSupported().process(["Y"]) is True
    assert h.AppArmorSupported().process(["N"]) is False


def test_sysctl_fact_command_runs_in_a_posix_shell():
    output = subprocess.run(
        ["sh", "-c", h.SysctlState().command(("net.ipv4.ip_forward", "no.such.key"))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    state = h.SysctlState().process(output)
    assert state["no.such.key"] == h.SysctlValue(None, False)
    assert "net.ipv4.ip_forward" in state


def test_marker_fact_reads_the_live_table(tmp_path):
    from tests.tools import cannot_run_here, require_tool
    from tests.unit.conftest import make_settings

    nft, unshare = require_tool("nft"), require_tool("unshare")

    text = h.nftables_text(make_settings())
    ruleset = tmp_path / "rules.nft"
    ruleset.write_text(text)
    script = f"{nft} -f {ruleset} && {h.NftRaveMarker().command()}"
    result = subprocess.run([unshare, "-n", "sh", "-c", script], capture_output=True, text=True)
    if result.returncode != 0 and "Operation not permitted" in result.stderr:
        cannot_run_here(f"no permission for a network namespace: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert h.NftRaveMarker().process(result.stdout.splitlines()) == h.nftables_marker(text)
