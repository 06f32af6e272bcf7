"""The host scan script (files/vulnscan/vulnscan_scan.py), run here against local data.

dpkg-query is replaced by a stub that prints a fixed package list; version comparisons use the
real `dpkg --compare-versions` (every Debian control machine has dpkg: tests/tools.py).
"""

import importlib.util
import json
import os
import stat
from pathlib import Path

import jsonschema
import pytest

from rave.render import FILES
from tests.tools import require_tool

SCRIPT = FILES / "vulnscan" / "vulnscan_scan.py"
# The official OASIS SARIF 2.1.0 schema (errata01, as published in oasis-tcs/sarif-spec
# Schemata/sarif-schema-2.1.0.json); vendored because tests run without network.
SARIF_SCHEMA = Path(__file__).parents[1] / "data" / "sarif-schema-2.1.0.json"

_spec = importlib.util.spec_from_file_location("vulnscan_scan", SCRIPT)
assert _spec is not None and _spec.loader is not None
scan = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scan)


@pytest.fixture(autouse=True)
def dpkg():
    """The scan compares versions with the real dpkg: a failure without it, not a skip."""
    return require_tool("dpkg")


DPKG_LIST = (
    "ii \topenssh-server\topenssh\t1:9.2p1-2+deb12u3\n"
    "ii \topenssh-client\topenssh\t1:9.2p1-2+deb12u3\n"
    "ii \tlibc6:amd64\tglibc\t2.36-9+deb12u7\n"
    "rc \told-thing\told\t1.0\n"
    "ii \tcurl\tcurl\t7.88.1-10+deb12u5\n"
)


def tracker(**entries):
    """A document in the Debian Security Tracker's JSON format."""
    return json.dumps(entries)


def issue(status, fixed=None, urgency="high", scope="remote", release="bookworm"):
    state = {"status": status, "urgency": urgency, "repositories": {release: "x"}}
    if fixed is not None:
        state["fixed_version"] = fixed
    return {"description": "a test issue", "scope": scope, "releases": {release: state}}


VULNERABLE = tracker(
    openssh={
        "CVE-2099-0001": issue("resolved", "1:9.2p1-2+deb12u99"),  # newer fix: finding
        "CVE-2099-0002": issue("resolved", "1:9.2p1-2+deb12u2"),  # fixed already
        "CVE-2099-0003": issue("open", urgency="unimportant"),  # no fix yet
        "CVE-2099-0004": issue("undetermined"),
    },
    glibc={"CVE-2099-0005": issue("resolved", "2.36-9+deb12u8", urgency="medium", scope="local")},
    notinstalled={"CVE-2099-0006": issue("open")},
)
CLEAN = tracker(
    openssh={"CVE-2099-0001": issue("resolved", "1:9.2p1-2+deb12u3")},
    notinstalled={"CVE-2099-0006": issue("open")},
)


@pytest.fixture
def host(tmp_path):
    dpkg_query = tmp_path / "dpkg-query"
    dpkg_query.write_text(f"#!/bin/sh\ncat <<'EOF'\n{DPKG_LIST}EOF\n")
    dpkg_query.chmod(0o755)
    config = {
        "host": "rave-test-1",
        "source": "debian-tracker",
        "release": "bookworm",
        "data_url": "http://127.0.0.1:9/unreachable",
        "data_file": str(tmp_path / "tracker.json"),
        "proxy": None,
        "timeout_seconds": 5,
        "state_dir": str(tmp_path / "state"),
        "textfile_dir": str(tmp_path / "textfile"),
        "npm_trees": [str(tmp_path / "no-ccr-here")],
        "dpkg_query": str(dpkg_query),
    }
    return tmp_path, config


def _run(host, data):
    _, config = host
    Path(config["data_file"]).write_text(data)
    code = scan.run(config)
    state = Path(config["state_dir"])
    report = json.loads((state / "report.json").read_text())
    sarif = json.loads((state / "findings.sarif").read_text())
    metrics = (Path(config["textfile_dir"]) / "rave_vulnscan.prom").read_text()
    return code, report, sarif, metrics


def _metric(metrics, line_start):
    values = [line.split()[-1] for line in metrics.splitlines() if line.startswith(line_start)]
    assert len(values) == 1, (line_start, metrics)
    return float(values[0])


def _validate_sarif(document):
    jsonschema.Draft4Validator(json.loads(SARIF_SCHEMA.read_text())).validate(document)


def test_vulnerable_data_gives_findings_sarif_and_metrics(host):
    code, report, sarif, metrics = _run(host, VULNERABLE)
    assert code == 0
    assert report["status"] == "ok"
    found = {(f["package"], f["id"]): f for f in report["findings"]}
    assert set(found) == {
        ("openssh", "CVE-2099-0001"),
        ("openssh", "CVE-2099-0003"),
        ("glibc", "CVE-2099-0005"),
    }
    ssh = found[("openssh", "CVE-2099-0001")]
    assert ssh["installed"] == "1:9.2p1-2+deb12u3"
    assert ssh["fixed_in"] == "1:9.2p1-2+deb12u99"
    assert ssh["fixable"] is True
    assert ssh["severity"] == "critical"  # tracker urgency high, remotely exploitable
    assert ssh["binaries"] == ["openssh-client", "openssh-server"]
    assert ssh["new"] is True
    assert found[("openssh", "CVE-2099-0003")]["fixable"] is False
    assert found[("openssh", "CVE-2099-0003")]["severity"] == "negligible"
    assert found[("glibc", "CVE-2099-0005")]["severity"] == "medium"
    assert report["npm_trees"][0]["status"] == "no npm tree"

    _validate_sarif(sarif)
    (run,) = sarif["runs"]
    assert run["invocations"][0]["executionSuccessful"] is True
    results = {r["ruleId"]: r for r in run["results"]}
    assert results["CVE-2099-0001"]["level"] == "error"
    assert results["CVE-2099-0001"]["properties"]["fixedIn"] == "1:9.2p1-2+deb12u99"
    assert {r["id"] for r in run["tool"]["driver"]["rules"]} == set(results)

    assert _metric(metrics, "rave_vulnscan_scan_ok") == 1
    assert _metric(metrics, 'rave_vulnscan_findings{fixable="true",severity="critical"}') == 1
    assert _metric(metrics, 'rave_vulnscan_findings{fixable="false",severity="negligible"}') == 1
    assert _metric(metrics, 'rave_vulnscan_findings{fixable="true",severity="medium"}') == 1
    assert _metric(metrics, 'rave_vulnscan_new_findings{severity="critical"}') == 1
    assert _metric(metrics, "rave_vulnscan_last_success_timestamp_seconds") == pytest.approx(
        report["started"], abs=1
    )
    mode = stat.S_IMODE(os.stat(Path(host[1]["textfile_dir"]) / "rave_vulnscan.prom").st_mode)
    assert mode == 0o644  # node exporter (another user) must read it


def test_findings_clear_when_the_data_no_longer_lists_them(host):
    _run(host, VULNERABLE)
    code, report, sarif, metrics = _run(host, CLEAN)
    assert code == 0
    assert report["findings"] == []
    _validate_sarif(sarif)
    assert sarif["runs"][0]["results"] == []
    assert _metric(metrics, 'rave_vulnscan_findings{fixable="true",severity="critical"}') == 0
    assert _metric(metrics, 'rave_vulnscan_new_findings{severity="critical"}') == 0


def test_a_second_scan_with_the_same_findings_has_nothing_new(host):
    _run(host, VULNERABLE)
    _, report, _, metrics = _run(host, VULNERABLE)
    assert report["findings"] and not any(f["new"] for f in report["findings"])
    assert _metric(metrics, 'rave_vulnscan_findings{fixable="true",severity="critical"}') == 1
    assert _metric(metrics, 'rave_vulnscan_new_findings{severity="critical"}') == 0


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("{", "truncated"),
        ("<html>proxy error</html>", "not a JSON object"),
        ("{}", "lists no packages"),
        ('{"openssh": {"CVE-1": {"releases": {"bullseye": {}}}}}', "no entries for release"),
        ('{"openssh": {"CVE-1": ' + json.dumps(issue("resolved", "1:9.2p1 bad")) + "}}", "invalid"),
        ('{"openssh": []}', "not an object"),
    ],
)
def test_unparsable_data_is_a_failed_scan_not_a_clean_one(host, data, reason, capsys):
    _run(host, VULNERABLE)  # a previous success, whose findings must not be lost
    code, report, sarif, metrics = _run(host, data)
    assert code == 1
    assert report["status"] == "failed"
    assert reason in report["error"]
    assert "findings" not in report
    assert reason in capsys.readouterr().err  # the journal
    _validate_sarif(sarif)
    (run,) = sarif["runs"]
    assert "results" not in run  # SARIF: absent results = the tool produced none (≠ empty)
    assert run["invocations"][0]["executionSuccessful"] is False
    assert _metric(metrics, "rave_vulnscan_scan_ok") == 0
    # the last successful scan's findings stay visible, with its timestamp
    assert _metric(metrics, 'rave_vulnscan_findings{fixable="true",severity="critical"}') == 1
    last_success = json.loads((Path(host[1]["state_dir"]) / "last-success.json").read_text())
    assert last_success["status"] == "ok"
    assert _metric(metrics, "rave_vulnscan_last_success_timestamp_seconds") == pytest.approx(
        last_success["started"], abs=1
    )


def test_an_unreachable_source_before_any_success_has_no_findings_metrics(host, capsys):
    _, config = host
    config["data_file"] = None  # data_url points at a closed local port
    code = scan.run(config)
    assert code == 1
    assert "cannot fetch http://127.0.0.1:9/unreachable" in capsys.readouterr().err
    metrics = (Path(config["textfile_dir"]) / "rave_vulnscan.prom").read_text()
    assert _metric(metrics, "rave_vulnscan_scan_ok") == 0
    assert "rave_vulnscan_findings" not in metrics  # unknown, not zero
    assert "rave_vulnscan_last_success_timestamp_seconds" not in metrics


def test_a_loopback_source_bypasses_the_egress_proxy(host, capsys):
    _, config = host
    config["data_file"] = None
    config["proxy"] = "http://proxy.invalid:3128"  # unresolvable: must not be used
    assert scan.run(config) == 1
    assert "Connection refused" in capsys.readouterr().err


def test_environment_overrides_the_data_source(host, monkeypatch, tmp_path):
    _, config = host
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    monkeypatch.setenv("RAVE_VULNSCAN_DATA_FILE", "/run/test/data.json")
    assert scan.load_config(str(path))["data_file"] == "/run/test/data.json"
    monkeypatch.delenv("RAVE_VULNSCAN_DATA_FILE")
    monkeypatch.setenv("RAVE_VULNSCAN_DATA_URL", "http://127.0.0.1:1/x")
    loaded = scan.load_config(str(path))
    assert loaded["data_url"] == "http://127.0.0.1:1/x"
    assert loaded["data_file"] is None


def test_installed_held_and_mixed_version_packages_are_read():
    packages = scan.parse_dpkg_query(
        "ii \tcurl\tcurl\t7.88.1-10+deb12u5\n"
        "hi \tlibcurl4:amd64\tcurl\t7.88.1-10+deb12u10\n"  # held, newer: curl counts as u5
        "hi \tvim\tvim\t2:9.0.1378-2\n"  # held packages are installed too
        "rc \tgone\tgone\t1.0\n"  # removed, config files only
        "un \tnever\tnever\t\n"
    )
    assert set(packages) == {"curl", "vim"}
    assert packages["curl"] == {
        "version": "7.88.1-10+deb12u5",
        "binaries": ["curl", "libcurl4:amd64"],
    }
    with pytest.raises(scan.ScanError, match="no installed packages"):
        scan.parse_dpkg_query("rc \tgone\tgone\t1.0\n")


def test_versions_are_compared_the_debian_way():
    pairs = [
        ("1:9.2p1-2+deb12u3", "1:9.2p1-2+deb12u10"),  # u10 > u3 (not a string compare)
        ("1.0~rc1", "1.0"),
        ("2:1.0", "10.0"),  # epoch wins
        ("1.0", "1.0"),
    ]
    assert scan.compare_lt(pairs) == {
        pairs[0]: True,
        pairs[1]: True,
        pairs[2]: False,
        pairs[3]: False,
    }


def test_top_level_iteration_matches_json_loads():
    text = ' { "a" : {"x": [1, 2]}, "b\\"q": {} ,"c":{"d":"}"} }\n'
    assert dict(scan.iter_top_level(text)) == json.loads(text)
    with pytest.raises(scan.ScanError):
        list(scan.iter_top_level('{"a": {}} trailing'))


@pytest.mark.parametrize(
    ("urgency", "scope", "severity"),
    [
        ("high", "remote", "critical"),
        ("high", "local", "high"),
        ("high**", None, "high"),
        ("medium", "remote", "medium"),
        ("low", None, "low"),
        ("unimportant", None, "negligible"),
        ("not yet assigned", None, "unknown"),
        ("end-of-life", None, "unknown"),
    ],
)
def test_tracker_urgency_mapping(urgency, scope, severity):
    assert scan.tracker_severity(urgency, scope) == severity


def test_trivy_output_is_parsed():
    report = {
        "Results": [
            {
                "Target": "debian 12.5",
                "Class": "os-pkgs",
                "Vulnerabilities": [
                    {
                        "VulnerabilityID": "CVE-2099-0100",
                        "PkgName": "openssh-server",
                        "InstalledVersion": "1:9.2p1-2+deb12u3",
                        "FixedVersion": "1:9.2p1-2+deb12u4",
                        "Severity": "CRITICAL",
                        "Title": "bad",
                    },
                    {
                        "VulnerabilityID": "CVE-2099-0101",
                        "PkgName": "curl",
                        "InstalledVersion": "7.88.1-10",
                        "Severity": "LOW",
                    },
                ],
            }
        ]
    }
    first, second = scan.trivy_findings(report)
    assert (first["severity"], first["fixable"], first["fixed_in"]) == (
        "critical",
        True,
        "1:9.2p1-2+deb12u4",
    )
    assert (second["severity"], second["fixable"]) == ("low", False)
    with pytest.raises(scan.ScanError):
        scan.trivy_findings({"unexpected": 1})


def test_npm_audit_output_is_parsed(tmp_path):
    (tmp_path / "node_modules" / "left-pad").mkdir(parents=True)
    (tmp_path / "node_modules" / "left-pad" / "package.json").write_text('{"version": "1.0.0"}')
    audit = {
        "auditReportVersion": 2,
        "vulnerabilities": {
            "left-pad": {
                "name": "left-pad",
                "severity": "moderate",
                "via": [
                    {
                        "source": 1001,
                        "name": "left-pad",
                        "title": "Prototype pollution",
                        "url": "https://github.com/advisories/GHSA-aaaa-bbbb-cccc",
                        "severity": "moderate",
                    }
                ],
                "nodes": ["node_modules/left-pad"],
                "fixAvailable": {"name": "left-pad", "version": "1.3.0"},
            },
            "wrapper": {"name": "wrapper", "severity": "moderate", "via": ["left-pad"]},
        },
    }
    (finding,) = scan.npm_findings(str(tmp_path), audit)
    assert finding["id"] == "GHSA-aaaa-bbbb-cccc"
    assert (finding["installed"], finding["fixed_in"], finding["severity"]) == (
        "1.0.0",
        "1.3.0",
        "medium",
    )
    with pytest.raises(scan.ScanError, match=r"npm audit failed.*ENOTFOUND registry"):
        scan.npm_findings(str(tmp_path), {"error": {"summary": "ENOTFOUND registry"}})
    # what npm 10 prints when the registry refuses the audit endpoint (seen on a mirror)
    refused = {
        "message": "405 Method Not Allowed - POST https://registry.example/-/npm/v1/security/"
        "advisories/bulk",
        "statusCode": 405,
        "error": {"summary": "", "detail": ""},
    }
    with pytest.raises(scan.ScanError, match="405 Method Not Allowed"):
        scan.npm_findings(str(tmp_path), refused)


def test_a_missing_npm_tree_is_reported_not_skipped(tmp_path):
    findings, trees = scan.audit_npm({"npm_trees": [str(tmp_path / "ccr")], "state_dir": "/x"})
    assert findings == []
    assert trees == [
        {
            "path": str(tmp_path / "ccr"),
            "status": "no npm tree",
            "detail": f"{tmp_path / 'ccr' / 'package-lock.json'} does not exist",
        }
    ]
    _, trees = scan.audit_npm({"npm_trees": [], "state_dir": "/x"})
    assert trees[0]["status"] == "no npm tree"


def test_an_audited_tree_reports_how_many_packages_it_counted(tmp_path):
    tree = tmp_path / "ccr"
    tree.mkdir()
    lock = {
        "lockfileVersion": 3,
        "packages": {
            "": {"dependencies": {"router": "1.0.0"}},
            "node_modules/router": {"version": "1.0.0"},
            "node_modules/left-pad": {"version": "1.0.0"},
        },
    }
    (tree / "package-lock.json").write_text(json.dumps(lock))
    npm = tmp_path / "npm"  # stands in for `npm audit --json`: a clean audit
    npm.write_text('#!/bin/sh\necho \'{"auditReportVersion": 2, "vulnerabilities": {}}\'\n')
    npm.chmod(0o755)
    config = {"npm_trees": [str(tree)], "state_dir": str(tmp_path), "npm_command": str(npm)}
    findings, trees = scan.audit_npm(config)
    assert findings == []
    assert trees == [
        {
            "path": str(tree),
            "status": "audited",
            "detail": "2 packages, 0 findings",
            "packages": 2,
        }
    ]
    (tree / "package-lock.json").write_text("not json")
    with pytest.raises(scan.ScanError, match="cannot read"):
        scan.audit_npm(config)


def test_npm_that_prints_no_json_is_a_failed_scan_naming_what_it_said(tmp_path):
    tree = tmp_path / "ccr"
    tree.mkdir()
    (tree / "package-lock.json").write_text('{"packages": {"": {}}}')
    npm = tmp_path / "npm"  # what node killed by a seccomp filter looks like: nothing, status 159
    npm.write_text("#!/bin/sh\necho 'Bad system call' >&2\nexit 159\n")
    npm.chmod(0o755)
    config = {"npm_trees": [str(tree)], "state_dir": str(tmp_path), "npm_command": str(npm)}
    with pytest.raises(scan.ScanError, match=r"printed no JSON \(exit 159\): Bad system call"):
        scan.audit_npm(config)


def test_npm_9_refused_by_the_registry_names_the_refusal(tmp_path):
    """bookworm's npm 9 prints the registry's 405 without an `error` object."""
    refused = {"message": "405 Method Not Allowed - POST https://registry.example/-/npm/v1/x"}
    with pytest.raises(scan.ScanError, match="405 Method Not Allowed"):
        scan.npm_findings(str(tmp_path), refused)


def test_npm_audit_data_from_a_file_counts_the_real_tree(tmp_path):
    tree = tmp_path / "ccr"
    tree.mkdir()
    (tree / "package-lock.json").write_text(
        '{"packages": {"": {}, "node_modules/a": {}, "node_modules/b": {}, "node_modules/c": {}}}'
    )
    sample = FILES / "vulnscan" / "sample-npm-audit.json"
    config = {
        "npm_trees": [str(tree)],
        "state_dir": str(tmp_path),
        "npm_audit_file": str(sample),
        "npm_command": str(tmp_path / "no-npm-is-run"),
    }
    findings, trees = scan.audit_npm(config)
    assert findings == []
    assert trees[0]["status"] == "audited" and trees[0]["packages"] == 3
    assert f"audit data from {sample}" in trees[0]["detail"]
    config["npm_audit_file"] = str(tmp_path / "missing.json")
    with pytest.raises(scan.ScanError, match="cannot read the npm audit data"):
        scan.audit_npm(config)
