"""Settings, generated config and sandbox of the vulnerability-scan task (no host needed)."""

import json

import pytest
from pydantic import ValidationError

from rave.render import render
from tasks import vulnscan
from tests.unit.conftest import make_settings


def test_defaults_use_the_debian_tracker_through_the_proxy():
    config = make_settings(egress_proxy="http://10.0.0.1:3128")
    generated = vulnscan.scan_config(config)
    assert generated["source"] == "debian-tracker"
    assert generated["data_url"] == "https://security-tracker.debian.org/tracker/data/json"
    assert generated["data_file"] is None
    assert generated["proxy"] == "http://10.0.0.1:3128"
    assert generated["release"] == "bookworm"
    json.dumps(generated)  # the host reads it as JSON


def test_trivy_needs_a_pinned_key_and_no_tracker_file():
    with pytest.raises(ValidationError, match="vulnscan_trivy_key_sha256"):
        make_settings(vulnscan_source="trivy")
    with pytest.raises(ValidationError, match="vulnscan_data_file"):
        make_settings(
            vulnscan_source="trivy",
            vulnscan_trivy_key_sha256="0" * 64,
            vulnscan_data_file="/srv/tracker.json",
        )
    assert make_settings(vulnscan_source="trivy", vulnscan_trivy_key_sha256="0" * 64)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("vulnscan_source", "debsecan"),
        ("vulnscan_data_url", "ftp://x"),
        ("vulnscan_data_file", "relative/path.json"),
        ("vulnscan_randomized_delay", "4 hours"),
        ("vulnscan_timeout_seconds", 5),
    ],
)
def test_bad_values_are_refused(field, value):
    with pytest.raises(ValidationError, match=field):
        make_settings(**{field: value})


def test_the_unit_is_sandboxed_and_limited():
    config = make_settings()
    dropin = vulnscan.dropin_text(vulnscan.sandbox(config), vulnscan.limits(config), "test")
    assert "ProtectSystem=strict" in dropin
    assert f"ReadWritePaths={vulnscan.STATE_DIR} {vulnscan.TEXTFILE_DIR}" in dropin
    assert "CapabilityBoundingSet=\n" in dropin  # no capabilities at all
    assert "MemoryMax=384M" in dropin
    # npm (node's JIT) needs W+X memory only when there are npm trees to audit
    assert "MemoryDenyWriteExecute=no" in dropin
    no_npm = make_settings(vulnscan_npm_trees=[])
    assert "MemoryDenyWriteExecute=yes" in vulnscan.dropin_text(
        vulnscan.sandbox(no_npm), None, "test"
    )


def test_the_timer_is_daily_with_a_randomized_delay():
    contexts = vulnscan.templates(make_settings(vulnscan_randomized_delay="2h"))
    timer = render("vulnscan/rave-vulnscan.timer.j2", **contexts["vulnscan/rave-vulnscan.timer.j2"])
    assert "OnCalendar=daily\n" in timer
    assert "RandomizedDelaySec=2h\n" in timer
    assert "Persistent=true\n" in timer
    service = render(
        "vulnscan/rave-vulnscan.service.j2", **contexts["vulnscan/rave-vulnscan.service.j2"]
    )
    assert "Type=oneshot" in service
    assert f"ExecStart=/usr/bin/python3 {vulnscan.SCRIPT} --config {vulnscan.CONFIG_PATH}" in (
        service
    )


def test_an_uploaded_offline_copy_needs_a_destination_and_must_exist():
    with pytest.raises(ValidationError, match="needs vulnscan_data_file"):
        make_settings(vulnscan_data_upload="files/vulnscan/sample-tracker.json")
    with pytest.raises(ValidationError, match="no file"):
        make_settings(vulnscan_data_file="/srv/t.json", vulnscan_data_upload="files/nope.json")
    config = make_settings(
        vulnscan_data_file="/srv/t.json", vulnscan_data_upload="files/vulnscan/sample-tracker.json"
    )
    assert vulnscan.scan_config(config)["data_file"] == "/srv/t.json"


def test_the_staging_sample_is_valid_tracker_data_and_says_it_is_a_sample():
    sample = json.loads((vulnscan.REPO_ROOT / "files/vulnscan/sample-tracker.json").read_text())
    ((_package, issues),) = sample.items()
    ((_, issue),) = issues.items()
    assert "bookworm" in issue["releases"]
    assert "NOT a vulnerability database" in issue["description"]


def test_the_routers_npm_tree_is_audited_where_its_task_installs_it():
    """The audited directory comes from the router's declaration, the one tasks/ccr.py installs
    into: a second hard-coded copy (the old /opt/rave-ccr) would audit an empty folder."""
    from rave.components import component
    from tasks import ccr

    declared = component("ccr").npm_tree
    assert declared and declared == ccr.PREFIX
    assert vulnscan.scan_config(make_settings())["npm_trees"] == [declared]
    # a host without the router audits no npm tree, and its scan keeps W^X memory
    without = make_settings(ccr_install=False)
    assert vulnscan.scan_config(without)["npm_trees"] == []
    assert "MemoryDenyWriteExecute=yes" in vulnscan.dropin_text(
        vulnscan.sandbox(without), None, "test"
    )
    # an operator's list replaces the derived one
    chosen = make_settings(vulnscan_npm_trees=["/srv/app"])
    assert vulnscan.scan_config(chosen)["npm_trees"] == ["/srv/app"]


def test_node_gets_the_syscalls_it_needs_only_when_there_is_a_tree_to_audit():
    """V8 uses memory protection keys: without @pkey, node dies (SIGSYS) before npm prints a
    byte, and every scan of a host with the router failed on empty output."""
    with_tree = vulnscan.dropin_text(vulnscan.sandbox(make_settings()), None, "test")
    assert "SystemCallFilter=@system-service @pkey\n" in with_tree
    without = vulnscan.dropin_text(
        vulnscan.sandbox(make_settings(vulnscan_npm_trees=[])), None, "test"
    )
    assert "@pkey" not in without


def test_npm_audit_data_is_uploaded_only_where_set():
    assert vulnscan.scan_config(make_settings())["npm_audit_file"] is None
    staged = make_settings(vulnscan_npm_audit_upload="files/vulnscan/sample-npm-audit.json")
    assert vulnscan.scan_config(staged)["npm_audit_file"] == vulnscan.NPM_AUDIT_FILE
    with pytest.raises(ValidationError, match="vulnscan_npm_audit_upload"):
        make_settings(vulnscan_npm_audit_upload="files/vulnscan/no-such.json")
