"""rave-vulnscan: one table of the latest findings across hosts (SSH replaced by a stub)."""

import json

from rave import vulnscan_cli as cli


def finding(package, severity, fixed="2.0", ident="CVE-2099-1"):
    return {
        "package": package,
        "installed": "1.0",
        "fixed_in": fixed,
        "severity": severity,
        "id": ident,
        "fixable": fixed is not None,
    }


def ok_report(started, *findings, trees=None):
    return {
        "status": "ok",
        "started": started,
        "findings": list(findings),
        "npm_trees": trees or [{"path": "/opt/rave/ccr", "status": "audited", "detail": "0"}],
    }


def test_ssh_arguments_come_from_the_inventory_data():
    target = cli.ssh_target(
        "rave-staging-1",
        {
            "ssh_hostname": "10.213.8.11",
            "ssh_user": "agent",
            "ssh_key": "/k/id",
            "ssh_known_hosts_file": "/k/known_hosts",
            "ssh_strict_host_key_checking": "yes",
            "ssh_port": None,
        },
    )
    assert target.argv[-1] == "agent@10.213.8.11"
    assert "UserKnownHostsFile=/k/known_hosts" in target.argv
    assert "StrictHostKeyChecking=yes" in target.argv
    assert target.argv[target.argv.index("-i") + 1] == "/k/id"
    assert "-p" not in target.argv


def test_scan_now_starts_the_unit_before_showing():
    assert cli.remote_command(False).startswith("sudo -n /usr/bin/python3 ")
    command = cli.remote_command(True)
    assert command.index("systemctl start rave-vulnscan.service") < command.index("--show")


def test_one_table_across_hosts_with_failures_listed_not_hidden():
    success = ok_report(
        1000.0,
        finding("openssh", "critical", "1:9.2p1-2+deb12u99"),
        finding("glibc", "low", None, "CVE-2099-2"),
    )
    payloads = {
        "h1": cli.parse_show("h1", json.dumps({"latest": success, "last_success": success})),
        "h2": cli.parse_show(
            "h2",
            json.dumps(
                {
                    "latest": {"status": "failed", "started": 2000.0, "error": "cannot fetch x"},
                    "last_success": ok_report(1000.0, finding("curl", "high")),
                }
            ),
        ),
        "h3": cli.HostResult("h3", error="ssh failed: timeout"),
        "h4": cli.parse_show(
            "h4",
            json.dumps(
                {
                    "latest": ok_report(
                        1000.0,
                        trees=[{"path": "/opt/rave/ccr", "status": "no npm tree", "detail": "-"}],
                    ),
                    "last_success": ok_report(
                        1000.0,
                        trees=[{"path": "/opt/rave/ccr", "status": "no npm tree", "detail": "-"}],
                    ),
                }
            ),
        ),
    }
    targets = [cli.SshTarget(name, ()) for name in payloads]
    out, code = cli.report(targets, False, "unknown", lambda t, _: payloads[t.name])
    lines = out.splitlines()
    assert lines[0].split() == ["HOST", "PACKAGE", "INSTALLED", "FIXED-IN", "SEVERITY", "ID"]
    assert lines[1].split() == [
        "h1",
        "openssh",
        "1.0",
        "1:9.2p1-2+deb12u99",
        "critical",
        "CVE-2099-1",
    ]
    assert lines[2].split() == ["h1", "glibc", "1.0", "-", "low", "CVE-2099-2"]
    assert lines[3].split() == ["h2", "(stale)", "curl", "1.0", "2.0", "high", "CVE-2099-1"]
    assert any(
        line.startswith("h2: latest scan FAILED") and "cannot fetch x" in line for line in lines
    )
    assert any(line.startswith("h3: UNREACHABLE") for line in lines)
    assert "h4: npm: no npm tree (-)" in lines
    assert any(line.startswith("h4: no findings") for line in lines)
    assert code == 1  # a failed or unreachable host is not a clean answer


def test_min_severity_filters_and_all_clean_exits_zero():
    success = ok_report(1.0, finding("openssh", "critical"), finding("glibc", "low"))
    result = cli.HostResult("h1", latest=success, last_success=success)
    out, code = cli.report([cli.SshTarget("h1", ())], False, "high", lambda t, _: result)
    assert "openssh" in out and "glibc" not in out
    assert code == 0
