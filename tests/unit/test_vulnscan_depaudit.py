"""rave-depaudit's policy: severity from OSV records, threshold and ignores from pyproject."""

import datetime as dt

import pytest

from rave import depaudit

PIP_AUDIT = {
    "dependencies": [
        {
            "name": "requests",
            "version": "2.0.0",
            "vulns": [
                {
                    "id": "PYSEC-2099-1",
                    "aliases": ["GHSA-aaaa-bbbb-cccc"],
                    "fix_versions": ["2.31.0"],
                }
            ],
        },
        {
            "name": "jinja2",
            "version": "3.0.0",
            "vulns": [{"id": "GHSA-dddd-eeee-ffff", "aliases": [], "fix_versions": ["3.1.3"]}],
        },
        {"name": "pyyaml", "version": "6.0", "vulns": []},
        {"name": "rave-deploy", "skip_reason": "not on PyPI"},
    ]
}
OSV = {
    "GHSA-aaaa-bbbb-cccc": {"database_specific": {"severity": "HIGH"}},
    "GHSA-dddd-eeee-ffff": {"database_specific": {"severity": "MODERATE"}},
    "PYSEC-2099-1": {"database_specific": {}},
}


def lookup(ident):
    return OSV.get(ident)


def test_findings_are_rated_by_their_highest_alias():
    findings = depaudit.parse_pip_audit(PIP_AUDIT)
    assert [(f.package, f.ident) for f in findings] == [
        ("requests", "PYSEC-2099-1"),
        ("jinja2", "GHSA-dddd-eeee-ffff"),
    ]
    rated, failed = depaudit.evaluate(findings, depaudit.Policy("high"), lookup)
    assert [f.severity for f in rated] == ["high", "medium"]
    assert failed


@pytest.mark.parametrize(
    ("fail_on", "failed"), [("critical", False), ("high", True), ("medium", True)]
)
def test_the_threshold_decides(fail_on, failed):
    _, result = depaudit.evaluate(
        depaudit.parse_pip_audit(PIP_AUDIT), depaudit.Policy(fail_on), lookup
    )
    assert result is failed


def test_unrated_findings_fail_and_ignores_expire():
    findings = depaudit.parse_pip_audit(PIP_AUDIT)
    _, failed = depaudit.evaluate(findings, depaudit.Policy("critical"), lambda _: None)
    assert failed  # unknown severity: not shown harmless
    policy = depaudit.Policy(
        "high",
        ignore=(("GHSA-aaaa-bbbb-cccc", "not reachable from our code", dt.date(2027, 1, 31)),),
    )
    rated, failed = depaudit.evaluate(findings, policy, lookup, today=dt.date(2027, 1, 1))
    assert not failed
    assert rated[0].ignored == "not reachable from our code"
    _, failed = depaudit.evaluate(findings, policy, lookup, today=dt.date(2027, 2, 1))
    assert failed


def test_policy_comes_from_pyproject(tmp_path):
    assert depaudit.load_policy().fail_on in depaudit.LEVELS  # the project's own setting
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.rave-depaudit]\nfail_on = "severe"\n')
    with pytest.raises(SystemExit, match="fail_on"):
        depaudit.load_policy(pyproject)
    pyproject.write_text('[tool.rave-depaudit]\nignore = [{ id = "X" }]\n')
    with pytest.raises(SystemExit, match="needs a reason"):
        depaudit.load_policy(pyproject)


def test_report_lists_every_finding_and_the_verdict():
    rated, failed = depaudit.evaluate(
        depaudit.parse_pip_audit(PIP_AUDIT), depaudit.Policy("high"), lookup
    )
    text = depaudit.format_report(rated, depaudit.Policy("high"), failed)
    assert "requests" in text and "2.31.0" in text
    assert text.rstrip().endswith("fail_on=high: FAIL")


def test_audits_the_lock_file_by_default_without_resolving() -> None:
    from rave.depaudit import REPO_ROOT, pip_audit_command

    command = pip_audit_command(REPO_ROOT / "requirements.lock")
    assert command[command.index("--requirement") + 1].endswith("requirements.lock")
    assert "--no-deps" in command and "--disable-pip" in command
    assert "--requirement" not in pip_audit_command(None)


def test_a_missing_lock_file_is_refused_by_name(tmp_path) -> None:
    import pytest

    from rave.depaudit import run_pip_audit

    with pytest.raises(SystemExit, match=r"nope\.lock does not exist"):
        run_pip_audit(tmp_path / "nope.lock")
