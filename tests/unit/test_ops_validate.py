"""Validation's evaluation (rave/ops/validate.py): a healthy probe passes, each fault fails."""

import copy
import hashlib
import hmac

import pytest

from rave.components import COMPONENTS
from rave.modes import PROFILES, Mode
from rave.ops import validate as v
from tests.unit.conftest import make_settings

MB = 1024 * 1024
NOW = 1_800_000_000.0
SECURITY_INRELEASE = "security.debian.org_debian-security_dists_bookworm-security_InRelease"
CONFIG = make_settings(hostname="rave-staging-1")

NFT = """table inet filter {
	chain input {
		type filter hook input priority filter; policy drop;
		ct state established,related accept
		iif "lo" accept
		tcp dport 22 accept
		tcp dport 3002 accept
	}
	chain output {
		type filter hook output priority filter; policy accept;
		tcp dport { 80, 443 } accept
	}
}""".splitlines()


def unit(name, present=True, active="active", enabled="enabled", memory=20 * MB, limit=None):
    return {
        "unit": name,
        "present": present,
        "load_state": "loaded" if present else "not-found",
        "active_state": active,
        "sub_state": "running",
        "enabled": enabled,
        "memory_current": memory,
        "memory_max": limit,
        "active_since": 1,
        "restarts": 0,
    }


def healthy_probe():
    limits = PROFILES[Mode.SAFE].limits
    units = {}
    for c in COMPONENTS:
        lim = limits.get(c.name)
        units[c.name] = unit(
            f"{c.unit}.service",
            present=not c.optional,
            limit=lim.memory_max_mb * MB if lim else None,
        )
    units["rave-secrets.service"] = unit("rave-secrets.service")
    return {
        "ok": True,
        "os": {"ID": "debian", "VERSION_ID": "12"},
        "hostname": "rave-staging-1",
        "memtotal_kb": 2048 * 1024,
        "sshd": [
            "permitrootlogin no",
            "passwordauthentication no",
            "kbdinteractiveauthentication no",
            "permitemptypasswords no",
            "pubkeyauthentication yes",
            "x11forwarding no",
            "allowgroups rave-ssh",
        ],
        "nft": NFT,
        "fail2ban": ["Status", "|- Number of jail:\t1", "`- Jail list:\tsshd, nginx-limit"],
        "sysctl": ["net.ipv4.tcp_syncookies|1|1", "net.ipv4.conf.all.rp_filter| 1 |1"],
        "units": units,
        "listeners": [
            "LISTEN 0 128 0.0.0.0:22 0.0.0.0:*",
            "LISTEN 0 128 [::]:22 [::]:*",
            "LISTEN 0 511 0.0.0.0:3002 0.0.0.0:*",
            "LISTEN 0 511 127.0.0.1:8081 0.0.0.0:*",
            "LISTEN 0 2048 127.0.0.1:8001 0.0.0.0:*",
            "LISTEN 0 244 [::1]:5432 [::]:*",
            "LISTEN 0 4096 127.0.0.1:9090 0.0.0.0:*",
            "LISTEN 0 4096 127.0.0.1:9093 0.0.0.0:*",
            "LISTEN 0 4096 127.0.0.1:9100 0.0.0.0:*",
            "LISTEN 0 4096 127.0.0.1:9113 0.0.0.0:*",
            "LISTEN 0 4096 127.0.0.1:9187 0.0.0.0:*",
            "LISTEN 0 4096 127.0.0.53%lo:53 0.0.0.0:*",
        ],
        "release": {"commit": "0123456789abcdef", "mode": "SAFE"},
        "webhook_health": {
            "db": True,
            "spool_records": 0,
            "spool_bytes": 0,
            "stalled_seconds": 0,
            "dead_letters": 0,
            "dead_letter_store_full": False,
        },
        "apt_security": [
            f"{NOW - 3600:.10f} {SECURITY_INRELEASE}",
            f"{NOW - 40 * 86400:.10f} old.example_debian_dists_bullseye-security_Release",
            f"now {NOW:.0f}",
        ],
    }


def healthy_control():
    ports = {p: p in (22, 3002) for p in v.ports_to_probe()}
    http = {
        "status page": (True, "200 (want 200)"),
        "signed webhook accepted": (True, "202 (want 202)"),
        "unsigned webhook refused": (True, "401 (want 401)"),
    }
    return v.ControlResults(address="10.213.7.11", ports=ports, http=http)


def failures(probe, control=None):
    checks = v.evaluate("h", CONFIG, probe, control if control is not None else healthy_control())
    return {f"{c.stage}/{c.name}": c.detail for c in checks if not c.ok}


def test_healthy_host_passes_all_six_stages():
    checks = v.evaluate("h", CONFIG, healthy_probe(), healthy_control())
    assert [c for c in checks if not c.ok] == []
    assert {c.stage for c in checks} == set(v.STAGES)


def test_unreachable_host_fails_connectivity():
    checks = v.evaluate("h", CONFIG, {"ok": False}, None)
    assert [(c.stage, c.ok) for c in checks] == [("connectivity", False)]


def test_stopped_service_fails_naming_it():
    probe = healthy_probe()
    probe["units"]["nginx"]["active_state"] = "inactive"
    found = failures(probe)
    assert "services/nginx" in found
    assert "inactive" in found["services/nginx"]


def test_missing_required_unit_fails_but_optional_does_not():
    probe = healthy_probe()
    probe["units"]["webhook"]["present"] = False
    assert set(failures(probe)) == {"services/webhook"}


def test_disabled_service_fails():
    probe = healthy_probe()
    probe["units"]["prometheus"]["enabled"] = "disabled"
    assert "services/prometheus" in failures(probe)


def test_running_service_that_does_not_listen_fails():
    probe = healthy_probe()
    probe["units"]["ccr"]["present"] = True  # installed, "active" between crash-restarts
    assert failures(probe) == {"ports/declared ports listening": "not listening ['ccr:3456']"}
    probe["listeners"].append("LISTEN 0 511 127.0.0.1:3456 0.0.0.0:*")
    assert failures(probe) == {}


def test_extra_listener_on_public_address_fails():
    probe = healthy_probe()
    probe["listeners"].append("LISTEN 0 5 0.0.0.0:9999 0.0.0.0:*")
    found = failures(probe)
    assert "0.0.0.0:9999" in found["ports/only 22/3002 on non-loopback"]


def test_internal_port_on_all_addresses_fails():
    probe = healthy_probe()
    probe["listeners"].append("LISTEN 0 5 *:9090 *:*")
    assert "ports/only 22/3002 on non-loopback" in failures(probe)


def test_port_reachable_from_control_fails():
    control = healthy_control()
    control.ports[9090] = True
    found = failures(healthy_probe(), control)
    assert "must be closed [9090]" in next(d for k, d in found.items() if k.startswith("ports/"))


def test_nft_extra_accept_and_policy():
    probe = healthy_probe()
    probe["nft"] = [
        line.replace("tcp dport 3002 accept", "tcp dport { 3002, 8080-8081 } accept")
        for line in NFT
    ]
    assert "unexpected [8080, 8081]" in failures(probe)["security/nft public ports"]
    probe["nft"] = [line.replace("policy drop", "policy accept") for line in NFT]
    assert "security/nft input policy drop" in failures(probe)


def test_sshd_fail2ban_sysctl_faults():
    probe = healthy_probe()
    probe["sshd"] = [
        line.replace("permitrootlogin no", "permitrootlogin yes") for line in probe["sshd"]
    ]
    probe["fail2ban"] = ["`- Jail list:\tnginx-limit"]
    probe["sysctl"] = ["net.ipv4.tcp_syncookies|1|0"]
    found = failures(probe)
    assert "permitrootlogin=yes" in found["security/sshd effective config"]
    assert "missing ['sshd']" in found["security/fail2ban jails"]
    assert "net.ipv4.tcp_syncookies" in found["security/sysctl hardening"]


def test_memory_limit_wrong_or_exceeded():
    probe = healthy_probe()
    probe["units"]["webhook"]["memory_max"] = 999 * MB
    assert "resources/webhook memory" in failures(probe)
    probe = healthy_probe()
    probe["units"]["nginx"]["memory_current"] = 500 * MB
    assert "resources/nginx memory" in failures(probe)


def test_host_memory_too_small_for_full_pipe():
    config = make_settings(hostname="rave-staging-1", rave_mode="FULL_PIPE")
    probe = healthy_probe()
    checks = v.evaluate("h", config, probe, healthy_control())
    failed = {c.name for c in checks if not c.ok}
    assert "host memory" in failed
    # and every unit carries SAFE limits, not FULL_PIPE's
    assert "webhook memory" in failed


def test_application_failures_are_reported():
    control = healthy_control()
    control.http["unsigned webhook refused"] = (False, "202 (want 401)")
    assert "application/unsigned webhook refused" in failures(healthy_probe(), control)


def test_without_control_probes_only_the_hosts_application_checks():
    checks = v.evaluate("h", CONFIG, healthy_probe(), None)
    application = {c.name for c in checks if c.stage == "application"}
    assert application == {"webhook spool draining", "webhook dead letters"}
    assert all(c.ok for c in checks)


def _with_health(**health):
    probe = healthy_probe()
    probe["webhook_health"].update(health)
    return probe


def test_a_stalled_spool_fails_naming_the_seconds_and_records():
    found = failures(_with_health(stalled_seconds=300.4, spool_records=1234, db=False))
    assert found == {
        "application/webhook spool draining": (
            "stalled 300 s with 1234 records (writes to PostgreSQL fail)"
        )
    }
    # host-only validation (the host's timer, --host-only) fails the same way
    checks = v.evaluate("h", CONFIG, _with_health(stalled_seconds=300.4), None)
    assert [c.name for c in checks if not c.ok] == ["webhook spool draining"]


def test_the_stall_limit_is_120_seconds():
    assert v.SPOOL_STALLED_MAX_SECONDS == 120
    at_limit = _with_health(stalled_seconds=v.SPOOL_STALLED_MAX_SECONDS, spool_records=9)
    assert failures(at_limit) == {}
    over = _with_health(stalled_seconds=v.SPOOL_STALLED_MAX_SECONDS + 0.5, spool_records=9)
    assert list(failures(over)) == ["application/webhook spool draining"]


def test_waiting_dead_letters_fail_naming_the_command():
    found = failures(_with_health(dead_letters=3))
    assert found == {
        "application/webhook dead letters": "3 waiting (rave-ops dead-letters list)",
    }


def test_a_full_dead_letter_store_fails():
    found = failures(_with_health(dead_letters=10000, dead_letter_store_full=True))
    assert "store FULL" in found["application/webhook dead letters"]
    assert "10000 waiting" in found["application/webhook dead letters"]
    # the drain stops at the next refused record: the stall names the store, not PostgreSQL
    stopped = _with_health(
        dead_letters=10000, dead_letter_store_full=True, stalled_seconds=200, db=False
    )
    assert failures(stopped)["application/webhook spool draining"] == (
        "stalled 200 s with 0 records (the dead-letter store is full)"
    )


def test_a_receiver_that_does_not_answer_its_health_fails():
    probe = healthy_probe()
    probe["webhook_health"] = None
    found = failures(probe)
    assert found == {
        "application/webhook health": "no JSON answer from http://127.0.0.1:8001/healthz",
    }


def test_no_webhook_health_check_where_the_receiver_is_not_installed():
    probe = healthy_probe()
    probe["units"]["webhook"]["present"] = False
    probe["webhook_health"] = None
    checks = v.evaluate("h", CONFIG, probe, healthy_control())
    assert not any(c.name.startswith("webhook ") for c in checks)


def test_the_probe_reads_the_receivers_health():
    from rave.facts import ValidationProbe

    fact = ValidationProbe()
    assert "curl -sf --max-time 5 http://127.0.0.1:8001/healthz" in fact.command()
    answer = '{"db":true,"spool_records":2,"stalled_seconds":0.5,"dead_letters":1}'
    probe = fact.process(["@@rave-section webhook_health", answer])
    assert probe["webhook_health"]["dead_letters"] == 1
    assert fact.process(["@@rave-section webhook_health"])["webhook_health"] is None
    assert fact.process(["@@rave-section webhook_health", "[1]"])["webhook_health"] is None


def test_parsers():
    assert v.parse_listeners(["LISTEN 0 5 [::ffff:127.0.0.1]:80 *:*"]) == [("::ffff:127.0.0.1", 80)]
    assert v.is_loopback("127.0.0.53%lo") and v.is_loopback("::1")
    assert not v.is_loopback("0.0.0.0") and not v.is_loopback("::")
    assert v.nft_accepted_tcp_ports(NFT) == {22, 3002}
    assert v.parse_jails(["`- Jail list:\tsshd"]) == ["sshd"]


def test_signature_and_secret_helpers():
    assert v.first_secret('["new", "old"]') == "new"
    assert v.first_secret("garbage") is None
    assert v.first_secret('"only"') == "only"
    expected = hmac.new(b"k", b"body", hashlib.sha256).hexdigest()
    assert v.sign("k", b"body") == "sha256=" + expected


def test_report_table_and_summary():
    checks = [
        v.Check("h", "services", "nginx", False, "inactive"),
        v.Check("h", "connectivity", "ssh and facts", True, ""),
    ]
    text = v.report(checks)
    lines = text.splitlines()
    assert "1.connectivity" in lines[2] and "PASS" in lines[2]
    assert "3.services" in lines[3] and "FAIL" in lines[3]
    assert lines[-1] == "validation: 1/2 checks passed; FAILED: h services/nginx"


def test_probe_is_not_mutated_by_evaluation():
    probe = healthy_probe()
    before = copy.deepcopy(probe)
    v.evaluate("h", CONFIG, probe, healthy_control())
    assert probe == before


def test_sysctl_keys_the_deploy_reported_unsettable_are_excused():
    probe = healthy_probe()
    probe["sysctl"] = ["kernel.kptr_restrict|2|1", "net.ipv4.tcp_syncookies|1|1"]
    assert "security/sysctl hardening" in failures(probe)
    probe["hardening_report"] = {
        "exceptions": {
            "sysctl": {
                "kernel.kptr_restrict": {"desired": "2", "actual": "1", "reason": "read-only here"}
            }
        }
    }
    assert "security/sysctl hardening" not in failures(probe)


def test_nft_monitoring_ports_from_listed_sources_are_not_public():
    at = NFT.index("\t\ttcp dport 3002 accept") + 1
    rules = [*NFT[:at], "\t\tip saddr @monitoring_v4 tcp dport { 9100, 9113 } accept", *NFT[at:]]
    assert v.nft_input_accepts(rules) == ({22, 3002}, {9100, 9113})


def test_nft_policy_of_the_project_table_wins_over_other_tables():
    rules = [
        "table inet f2b-table {",
        "\tchain f2b-chain {",
        "\t\ttype filter hook input priority filter - 1; policy accept;",
        "\t\ttcp dport 22 ip saddr @addr-set-sshd reject",
        "\t}",
        "}",
        *NFT,
    ]
    assert v.nft_input_policy(rules) == "drop"
    assert v.nft_accepted_tcp_ports(rules) == {22, 3002}


def test_test_delivery_passes_the_webhooks_own_verifier():
    """The signed delivery validation sends is one the webhook app accepts (same contract)."""
    from rave.webhook import verify

    body = b'{"event": "rave-ops.validation"}'
    headers = {
        v.SIGNATURE_HEADER.lower(): v.sign("s3cret", body),
        v.EVENT_HEADER.lower(): v.TEST_EVENT,
        v.DELIVERY_HEADER.lower(): "rave-ops-1",
    }
    secrets = verify.ProviderSecrets(github=[b"s3cret"])
    verified = verify.verify(headers, body, secrets, now=0)
    assert verified.event == v.TEST_EVENT
    with pytest.raises(verify.Rejected):
        verify.verify(headers, body, verify.ProviderSecrets(github=[b"other"]), now=0)


def test_recent_security_lists_pass():
    check = v.security_lists_check("h", CONFIG, healthy_probe()["apt_security"])
    assert check.ok, check
    assert check.name == "security updates lists"
    assert SECURITY_INRELEASE in check.detail and "0.0 days old" in check.detail


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([f"{NOW - 10 * 86400} {SECURITY_INRELEASE}", f"now {NOW:.0f}"], "10.0 days old"),
        ([f"now {NOW:.0f}"], "no bookworm-security Release file"),
        ([], "no bookworm-security Release file"),
    ],
)
def test_stale_or_missing_security_lists_fail_naming_the_check(lines, message):
    probe = healthy_probe()
    probe["apt_security"] = lines
    found = failures(probe)
    assert list(found) == ["security/security updates lists"], found
    assert message in found["security/security updates lists"]


def test_security_lists_age_limit_is_the_setting():
    lines = [f"{NOW - 5 * 86400} {SECURITY_INRELEASE}", f"now {NOW:.0f}"]
    assert not v.security_lists_check("h", CONFIG, lines).ok
    relaxed = make_settings(hostname="rave-staging-1", apt_security_lists_max_age_days=7)
    assert v.security_lists_check("h", relaxed, lines).ok


def test_pgbackrest_check_is_a_validation_check_where_it_ran():
    probe = healthy_probe()
    probe["pgbackrest"] = {"rc": 0, "tail": ""}
    checks = v.evaluate("h", CONFIG, probe, healthy_control())
    assert [c.ok for c in checks if c.name == "pgbackrest check"] == [True]
    probe["pgbackrest"] = {"rc": 82, "tail": "ERROR: [082]: WAL segment was not archived"}
    assert failures(probe) == {
        "application/pgbackrest check": "ERROR: [082]: WAL segment was not archived"
    }
    probe["pgbackrest"] = None  # no WAL archiving with pgBackRest on this host: no check
    assert not any(c.name == "pgbackrest check" for c in v.evaluate("h", CONFIG, probe, None))


def test_the_probe_runs_pgbackrest_check_as_postgres_and_reads_its_exit_code():
    from rave.facts import ValidationProbe

    fact = ValidationProbe()
    assert "runuser -u postgres -- /usr/local/sbin/rave-pgbackrest check" in fact.command()
    probe = fact.process(["@@rave-section pgbackrest", "ERROR: [082]: not archived", "rc=82"])
    assert probe["pgbackrest"] == {"rc": 82, "tail": "ERROR: [082]: not archived"}
    assert fact.process(["@@rave-section pgbackrest"])["pgbackrest"] is None
