"""The custom facts' parsing (rave/facts.py), on recorded command output."""

import calendar

from rave.components import COMPONENTS
from rave.facts import (
    CertificateExpiry,
    DeployedRelease,
    JournalTail,
    LastBackup,
    ProjectServices,
    RaveMode,
    ValidationProbe,
    infer_mode,
    parse_openssl_date,
    parse_textfile_metric,
    project_units,
)
from rave.modes import PROFILES, Mode

MB = 1024 * 1024


def show_block(unit, load="loaded", active="active", sub="running", memory=50 * MB, limit=None):
    return [
        f"@@rave-unit {unit}",
        f"Id={unit}",
        f"LoadState={load}",
        f"ActiveState={active}",
        f"SubState={sub}",
        "UnitFileState=enabled",
        f"MemoryCurrent={memory if memory is not None else '[not set]'}",
        f"MemoryMax={limit if limit is not None else 'infinity'}",
        "ActiveEnterTimestamp=@1764270000",
        "NRestarts=2",
    ]


def test_project_units_cover_every_component():
    units = project_units()
    assert set(units) == {c.name for c in COMPONENTS}
    assert units["webhook"] == "rave-webhook.service"


def test_project_services_parses_states_and_marks_missing_units():
    output = show_block("rave-webhook.service", limit=192 * MB) + show_block(
        "grafana-server.service", load="not-found", active="inactive", sub="dead", memory=None
    )
    services = ProjectServices().process(output)
    webhook = services["webhook"]
    assert webhook["present"] is True
    assert webhook["active_state"] == "active"
    assert webhook["memory_current"] == 50 * MB
    assert webhook["memory_max"] == 192 * MB
    assert webhook["active_since"] == 1764270000
    assert webhook["restarts"] == 2
    assert services["grafana"]["present"] is False
    assert services["grafana"]["memory_current"] is None


def test_project_services_command_asks_every_unit():
    command = ProjectServices().command()
    for unit in project_units().values():
        assert unit in command
    assert "--timestamp=unix" in command


def test_uint64_max_means_unset():
    block = show_block("nginx.service", memory=2**64 - 1, limit=2**64 - 1)
    assert ProjectServices().process(block)["nginx"]["memory_current"] is None


def test_deployed_release():
    assert DeployedRelease().process([]) is None
    assert DeployedRelease().process(['{"commit": "abc", "mode": "SAFE"}'])["commit"] == "abc"
    assert "error" in DeployedRelease().process(["not json"])


def test_infer_mode_matches_profiles():
    for mode, profile in PROFILES.items():
        limits = {n: lim.memory_max_mb * MB for n, lim in profile.limits.items() if n != "ccr"}
        assert infer_mode(limits) == mode.value
    assert infer_mode({"webhook": 1 * MB}) == "mixed"
    assert infer_mode({"webhook": None}) is None


def test_rave_mode_fact_reads_recorded_and_effective():
    safe = PROFILES[Mode.SAFE].limits
    output = [
        "@@rave-unit release",
        '{"commit": "abc",  "mode": "SAFE"}',
        "@@rave-unit rave-webhook.service",
        "LoadState=loaded",
        f"MemoryMax={safe['webhook'].memory_max_mb * MB}",
        "@@rave-unit nginx.service",
        "LoadState=loaded",
        f"MemoryMax={safe['nginx'].memory_max_mb * MB}",
    ]
    assert RaveMode().process(output) == {"recorded": "SAFE", "effective": "SAFE"}


def test_textfile_metric_and_last_backup():
    lines = [
        "# HELP rave_backup_last_success_timestamp_seconds last good backup",
        "# TYPE rave_backup_last_success_timestamp_seconds gauge",
        'rave_backup_last_success_timestamp_seconds{repo="local"} 1764270000',
        "rave_backup_last_success_timestamp_seconds_other 5",
        "@@rave-unit now 1764273600",
    ]
    assert parse_textfile_metric(lines, "rave_backup_last_success_timestamp_seconds") == 1764270000
    assert LastBackup().process(lines) == {"timestamp": 1764270000, "age_seconds": 3600}
    assert LastBackup().process(["@@rave-unit now 5"])["timestamp"] is None


def test_certificate_expiry():
    assert parse_openssl_date("Nov 27 19:00:00 2027 GMT") == calendar.timegm(
        (2027, 11, 27, 19, 0, 0, 0, 0, 0)
    )
    assert parse_openssl_date("garbage") is None
    now = calendar.timegm((2027, 11, 17, 19, 0, 0, 0, 0, 0))
    result = CertificateExpiry().process(
        ["notAfter=Nov 27 19:00:00 2027 GMT", "subject=CN = rave", f"@@rave-unit now {now}"]
    )
    assert result["present"] is True
    assert result["days_left"] == 10
    assert result["subject"] == "CN = rave"
    assert CertificateExpiry().process(["absent", "@@rave-unit now 1"]) == {"present": False}


def test_journal_tail():
    tail = JournalTail()
    assert "-n 5" in tail.command(units=["nginx.service"], lines=5)
    out = tail.process(["@@rave-unit nginx.service", "line 1", "line 2", "@@rave-unit x.service"])
    assert out == {"nginx.service": ["line 1", "line 2"], "x.service": []}


def test_validation_probe_sections():
    output = [
        "@@rave-section os",
        "ID=debian",
        'VERSION_ID="12"',
        "@@rave-section hostname",
        "rave-staging-1",
        "@@rave-section meminfo",
        "MemTotal:        4000000 kB",
        "@@rave-section units",
        *show_block("nginx.service"),
        *show_block("rave-secrets.service", sub="exited"),
        "@@rave-section listeners",
        "LISTEN 0 511 0.0.0.0:3002 0.0.0.0:*",
        "@@rave-section release",
        '{"commit": "abc"}',
    ]
    probe = ValidationProbe().process(output)
    assert probe["ok"] is True
    assert probe["os"] == {"ID": "debian", "VERSION_ID": "12"}
    assert probe["hostname"] == "rave-staging-1"
    assert probe["memtotal_kb"] == 4000000
    assert probe["units"]["nginx"]["present"]
    assert probe["units"]["rave-secrets.service"]["sub_state"] == "exited"
    assert probe["release"] == {"commit": "abc"}
    assert probe["listeners"] == ["LISTEN 0 511 0.0.0.0:3002 0.0.0.0:*"]


def test_probe_command_reads_no_secret():
    command = ValidationProbe().command()
    assert "/run/rave/secrets" not in command


def test_secrets_recipient_status():
    from rave.facts import SecretsRecipientStatus, ssh_key_tag

    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEEXAMPLEEXAMPLEEXAMPLEEXAMPLEEXAMPLEx"
    tag = ssh_key_tag(key)
    assert tag and len(tag) == 6
    output = [
        "@@rave-section key",
        key + " root@host",
        "@@rave-section stanzas",
        "present",
        "-> X25519 abcdef",
        f"-> ssh-ed25519 {tag} xyz",
        "@@rave-section service",
        "ActiveState=active",
        "SubState=exited",
        "Result=success",
        "@@rave-section files",
        "9",
    ]
    status = SecretsRecipientStatus().process(output)
    assert status == {
        "host_key": key,
        "encrypted_file": True,
        "recipients": 2,
        "encrypted_to_host": True,
        "service": "active/exited",
        "service_result": "success",
        "secret_files": 9,
    }
    other = [line.replace(tag, "ZZZZZZ") for line in output]
    assert SecretsRecipientStatus().process(other)["encrypted_to_host"] is False


def test_facts_paths_match_the_secrets_contract():
    from rave import facts
    from rave.secrets import deploy

    assert facts.SECRETS_ENCRYPTED == deploy.REMOTE_ENCRYPTED
    assert facts.SECRETS_ROOT == deploy.SECRETS_ROOT
    assert facts.HOST_KEY_PUB == deploy.HOST_KEY + ".pub"
    assert deploy.secret_path("nginx", "tls_certificate") == facts.TLS_CERTIFICATE
