"""The host-side scripts (Python standard library only), run here against temporary files."""

import json
import os
import pwd
import subprocess
import time
from pathlib import Path

import pytest

from tests.tools import require_tool
from tests.unit.host_programs import load_host_program

ROOT = Path(__file__).resolve().parents[2]
HEALTHCHECK = ROOT / "files" / "healthcheck" / "rave-healthcheck"
MERGE = ROOT / "files" / "alertmanager" / "rave-alertmanager-config"


hc = load_host_program(HEALTHCHECK, "rave_healthcheck")
merge = load_host_program(MERGE, "rave_alertmanager_config")


@pytest.fixture
def certificate(tmp_path):
    def make(days: int) -> Path:
        cert = tmp_path / f"cert-{days}.pem"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                str(tmp_path / "key.pem"),
                "-out",
                str(cert),
                "-days",
                str(days),
                "-subj",
                "/CN=test",
            ],
            check=True,
            capture_output=True,
        )
        return cert

    return make


def _config(tmp_path, **overrides) -> Path:
    textfile = tmp_path / "textfile"
    config = {
        "textfile_dir": str(textfile),
        "units": [],
        "ports": [],
        "certificates": [],
        "certificate_min_days": 14,
        "disks": [{"path": str(tmp_path), "min_free_percent": 1}],
        "backup": None,
        **overrides,
    }
    path = tmp_path / "healthcheck.json"
    path.write_text(json.dumps(config))
    return path


def _metrics(tmp_path) -> str:
    return (tmp_path / "textfile" / "rave_healthcheck.prom").read_text()


def _fail2ban_metrics(tmp_path) -> str:
    return (tmp_path / "textfile" / hc.FAIL2BAN_OUTPUT_NAME).read_text()


def test_all_passing_exits_0_and_writes_metrics(tmp_path, certificate):
    path = _config(tmp_path, certificates=[{"name": "tls", "path": str(certificate(90))}])
    assert hc.main(["--config", str(path), "--quiet"]) == 0
    text = _metrics(tmp_path)
    assert 'rave_healthcheck_check_ok{check="certificate",target="tls"} 1' in text
    assert "rave_healthcheck_failed_checks 0" in text
    assert "rave_certificate_expiry_timestamp_seconds{" in text
    assert [p.name for p in (tmp_path / "textfile").iterdir()] == ["rave_healthcheck.prom"]
    promtool = require_tool("promtool")
    lint = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_expiring_certificate_and_full_disk_fail(tmp_path, certificate, capsys):
    path = _config(
        tmp_path,
        certificates=[{"name": "tls", "path": str(certificate(5))}],
        disks=[{"path": str(tmp_path), "min_free_percent": 100}],
    )
    assert hc.main(["--config", str(path), "--quiet"]) == hc.CHECKS_FAILED
    text = _metrics(tmp_path)
    assert 'rave_healthcheck_check_ok{check="certificate",target="tls"} 0' in text
    assert f'rave_healthcheck_check_ok{{check="disk",target="{tmp_path}"}} 0' in text
    assert "rave_healthcheck_failed_checks 2" in text
    err = capsys.readouterr().err
    assert "FAIL  certificate" in err and "expires in 5.0 days" in err


def test_missing_certificate_fails_without_crashing(tmp_path):
    path = _config(tmp_path, certificates=[{"name": "tls", "path": str(tmp_path / "none.pem")}])
    assert hc.main(["--config", str(path), "--quiet"]) == hc.CHECKS_FAILED
    assert 'check="certificate",target="tls"} 0' in _metrics(tmp_path)


def test_backup_age_from_the_backup_textfile(tmp_path):
    backup = {"metric": "rave_backup_last_success_timestamp_seconds", "max_age_seconds": 3600}
    path = _config(tmp_path, backup=backup)
    (tmp_path / "textfile").mkdir()
    prom = tmp_path / "textfile" / "rave_backup.prom"
    # never backed up: the backup task writes 0
    prom.write_text("rave_backup_last_success_timestamp_seconds 0\n")
    assert hc.main(["--config", str(path), "--quiet"]) == hc.CHECKS_FAILED
    prom.write_text(f"rave_backup_last_success_timestamp_seconds {time.time() - 60:.0f}\n")
    assert hc.main(["--config", str(path), "--quiet"]) == 0
    text = _metrics(tmp_path)
    assert 'rave_healthcheck_check_ok{check="backup_age",target="backup"} 1' in text
    assert "rave_healthcheck_backup_max_age_seconds 3600" in text
    prom.unlink()
    assert hc.main(["--config", str(path), "--quiet"]) == hc.CHECKS_FAILED


def test_ports_from_proc_net_tcp(tmp_path):
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert port in hc.listening_ports()
        path = _config(
            tmp_path,
            ports=[
                {"component": "x", "port": port, "purpose": "test"},
                {"component": "y", "port": 1, "purpose": "nothing"},
            ],
        )
        assert hc.main(["--config", str(path), "--quiet"]) == hc.CHECKS_FAILED
    text = _metrics(tmp_path)
    assert f'check="port",target="x:{port}"}} 1' in text
    assert 'check="port",target="y:1"} 0' in text


def test_units_and_their_resources(tmp_path, monkeypatch):
    shown = (
        "Id=a.service\nLoadState=loaded\nActiveState=active\nSubState=running\n"
        "MemoryCurrent=1048576\nMemoryMax=268435456\nCPUUsageNSec=2000000000\nNRestarts=0\n\n"
        "Id=b.service\nLoadState=not-found\nActiveState=inactive\nSubState=dead\n"
        "MemoryCurrent=[not set]\nMemoryMax=infinity\nCPUUsageNSec=[not set]\nNRestarts=0\n"
    )

    class Done:
        stdout = shown

    monkeypatch.setattr(hc.subprocess, "run", lambda *a, **k: Done())
    path = _config(tmp_path, units=["a.service", "b.service"])
    assert hc.main(["--config", str(path), "--quiet"]) == hc.CHECKS_FAILED
    text = _metrics(tmp_path)
    assert 'check="unit",target="a.service"} 1' in text
    assert 'check="unit",target="b.service"} 0' in text
    assert 'rave_unit_memory_bytes{unit="a.service"} 1048576' in text
    assert 'rave_unit_memory_max_bytes{unit="a.service"} 268435456' in text
    assert 'rave_unit_cpu_seconds_total{unit="a.service"} 2.0' in text
    assert 'rave_unit_memory_bytes{unit="b.service"}' not in text


def test_journal_priority_prefix_only_under_systemd(tmp_path, monkeypatch, capsys):
    path = _config(tmp_path, disks=[{"path": str(tmp_path), "min_free_percent": 100}])
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    hc.main(["--config", str(path), "--quiet"])
    assert "<3>FAIL  disk" in capsys.readouterr().err


def test_a_broken_config_exits_1(tmp_path):
    (tmp_path / "bad.json").write_text("{")
    assert hc.main(["--config", str(tmp_path / "bad.json")]) == 1


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    hc.write_atomically(str(tmp_path), "x.prom", "a 1\n")
    hc.write_atomically(str(tmp_path), "x.prom", "a 2\n")
    assert os.listdir(tmp_path) == ["x.prom"]
    assert (tmp_path / "x.prom").read_text() == "a 2\n"
    assert (tmp_path / "x.prom").stat().st_mode & 0o777 == 0o644


# --- Alertmanager configuration builder ----------------------------------------------------


def _base() -> dict:
    return {
        "route": {"receiver": "null", "routes": [{"receiver": "pager", "matchers": ['a="b"']}]},
        "receivers": [{"name": "null"}, {"name": "pager"}],
    }


def test_secret_receivers_replace_the_empty_ones(tmp_path):
    base = tmp_path / "base.json"
    base.write_text(json.dumps(_base()))
    secret = tmp_path / "secret.json"
    pager = {"name": "pager", "pagerduty_configs": [{"routing_key": "k"}]}
    secret.write_text(json.dumps([pager, {"name": "extra", "slack_configs": []}]))
    out = tmp_path / "am.yml"
    assert merge.main([str(base), str(secret), str(out)]) == 0
    config = json.loads(out.read_text())
    assert [r["name"] for r in config["receivers"]] == ["extra", "null", "pager"]
    assert pager in config["receivers"]
    assert out.stat().st_mode & 0o777 == 0o600


def test_missing_secret_silences(tmp_path):
    base = tmp_path / "base.json"
    base.write_text(json.dumps(_base()))
    out = tmp_path / "am.yml"
    assert merge.main([str(base), str(tmp_path / "none"), str(out)]) == 0
    assert json.loads(out.read_text())["receivers"] == _base()["receivers"]


def test_bad_secret_is_refused_without_echoing_it(tmp_path, capsys):
    base = tmp_path / "base.json"
    base.write_text(json.dumps(_base()))
    secret = tmp_path / "secret.json"
    secret.write_text('{"not": "a list", "token": "s3cr3t"')
    assert merge.main([str(base), str(secret), str(tmp_path / "out")]) == 1
    secret.write_text('[{"token": "s3cr3t"}]')
    assert merge.main([str(base), str(secret), str(tmp_path / "out")]) == 1
    assert "s3cr3t" not in capsys.readouterr().err


def test_the_secrets_models_receivers_become_alertmanager_integrations():
    secret = {
        "name": "ops",
        "webhook_urls": ["https://hooks.example/a"],
        "email_to": ["ops@example.org"],
        "smtp_smarthost": "smtp.example.org:587",
        "smtp_username": "u",
        "smtp_password": "p",
        "slack_webhook_urls": ["https://hooks.slack.example/x"],
        "pagerduty_routing_keys": ["k1"],
    }
    out = merge.translate(secret)
    assert out["webhook_configs"] == [{"url": "https://hooks.example/a", "send_resolved": True}]
    assert out["email_configs"] == [
        {
            "to": "ops@example.org",
            "send_resolved": True,
            "smarthost": "smtp.example.org:587",
            "auth_username": "u",
            "auth_password": "p",
        }
    ]
    assert out["slack_configs"][0]["api_url"] == "https://hooks.slack.example/x"
    assert out["pagerduty_configs"] == [{"routing_key": "k1"}]
    # the staging default: a named receiver without integrations (drops alerts)
    empty = {"name": "default", "webhook_urls": [], "email_to": [], "smtp_password": None}
    assert merge.translate(empty) == {"name": "default"}


def test_every_receiver_field_of_the_secrets_model_is_understood_by_the_host_script():
    from rave.secrets.model import AlertReceiver

    receiver = AlertReceiver(
        name="pager",
        slack_webhook_urls=["https://hooks.slack.example/x"],
        pagerduty_routing_keys=["k1"],
    )
    out = merge.translate(receiver.model_dump())
    assert out["slack_configs"][0]["api_url"] == "https://hooks.slack.example/x"
    assert out["pagerduty_configs"] == [{"routing_key": "k1"}]


def test_unknown_receiver_fields_are_refused():
    with pytest.raises(ValueError, match="unknown field"):
        merge.translate({"name": "x", "hipchat": "s3cr3t"})


def test_unit_memory_falls_back_to_the_cgroups_resident_memory(tmp_path, monkeypatch):
    """Without systemd memory accounting (staging containers) the RSS of the unit's processes."""
    group = tmp_path / "system.slice" / "x.service"
    group.mkdir(parents=True)
    (group / "cgroup.procs").write_text(f"{os.getpid()}\n999999999\n")
    monkeypatch.setattr(hc, "CGROUP_ROOTS", ("/nonexistent", str(tmp_path)))
    rss = hc.cgroup_rss("/system.slice/x.service")
    assert rss is not None and rss > 1024 * 1024
    assert hc.cgroup_rss("/system.slice/none.service") is None


# --- the webhook queue (the receiver's /healthz) ------------------------------------------


def _webhook(url: str) -> dict:
    return {"url": url, "stalled_max_seconds": 120}


def test_a_draining_webhook_queue_passes(tmp_path, healthz):
    url, _ = healthz
    path = _config(tmp_path, webhook=_webhook(url))
    assert hc.main(["--config", str(path), "--quiet"]) == 0
    text = _metrics(tmp_path)
    assert 'rave_healthcheck_check_ok{check="webhook",target="spool draining"} 1' in text
    assert 'rave_healthcheck_check_ok{check="webhook",target="dead letters"} 1' in text


def test_a_stalled_spool_fails_naming_the_cause(tmp_path, healthz, capsys):
    url, answer = healthz
    answer["body"].update(stalled_seconds=300.2, spool_records=27874, db=False)
    path = _config(tmp_path, webhook=_webhook(url))
    assert hc.main(["--config", str(path), "--quiet"]) == hc.CHECKS_FAILED
    assert 'check="webhook",target="spool draining"} 0' in _metrics(tmp_path)
    err = capsys.readouterr().err
    assert "FAIL  webhook      spool draining" in err
    assert "stalled 300 s with 27874 records (writes to PostgreSQL fail)" in err


def test_the_stall_limit_comes_from_the_config(tmp_path, healthz):
    url, answer = healthz
    answer["body"].update(stalled_seconds=120, spool_records=5)
    path = _config(tmp_path, webhook=_webhook(url))
    assert hc.main(["--config", str(path), "--quiet"]) == 0  # at the limit: still fine
    answer["body"].update(stalled_seconds=121)
    assert hc.main(["--config", str(path), "--quiet"]) == hc.CHECKS_FAILED
    strict = _config(tmp_path, webhook={"url": url, "stalled_max_seconds": 200})
    assert hc.main(["--config", str(strict), "--quiet"]) == 0


def test_waiting_dead_letters_fail_naming_the_command(tmp_path, healthz, capsys):
    url, answer = healthz
    answer["body"].update(dead_letters=3)
    path = _config(tmp_path, webhook=_webhook(url))
    assert hc.main(["--config", str(path), "--quiet"]) == hc.CHECKS_FAILED
    assert 'check="webhook",target="dead letters"} 0' in _metrics(tmp_path)
    assert "3 waiting (rave-ops dead-letters list)" in capsys.readouterr().err
    answer["body"].update(dead_letters=0, dead_letter_store_full=True)
    assert hc.main(["--config", str(path), "--quiet"]) == hc.CHECKS_FAILED
    assert "store FULL" in capsys.readouterr().err


def test_a_receiver_without_a_json_health_fails(tmp_path, healthz, capsys):
    url, answer = healthz
    answer["body"] = None
    path = _config(tmp_path, webhook=_webhook(url))
    assert hc.main(["--config", str(path), "--quiet"]) == hc.CHECKS_FAILED
    assert 'check="webhook",target="health"} 0' in _metrics(tmp_path)
    assert f"no JSON answer from {url}" in capsys.readouterr().err


def test_no_webhook_check_without_the_receiver(tmp_path):
    path = _config(tmp_path)
    assert hc.main(["--config", str(path), "--quiet"]) == 0
    assert 'check="webhook"' not in _metrics(tmp_path)


def test_the_deploy_points_the_health_check_at_the_receiver():
    from rave import observability as obs
    from rave.ops.validate import SPOOL_STALLED_MAX_SECONDS
    from tests.unit.conftest import make_settings

    config = json.loads(obs.healthcheck_config(make_settings()))
    assert config["webhook"] == {
        "url": "http://127.0.0.1:8001/healthz",
        "stalled_max_seconds": SPOOL_STALLED_MAX_SECONDS,
    }
    assert hc.STALLED_MAX_SECONDS == SPOOL_STALLED_MAX_SECONDS


# --- security signals (the SSHAuthFailureBurst, Fail2banBanning, UndeclaredPortListening alerts)

SSHD_JOURNAL = """\
Connection from 10.213.21.1 port 40000 on 10.213.21.11 port 22 rdomain ""
Invalid user nobody-here from 10.213.21.1 port 40000
Connection closed by invalid user nobody-here 10.213.21.1 port 40000 [preauth]
Failed publickey for agent from 10.213.21.1 port 40002 ssh2: ED25519 SHA256:abc
User root from 10.213.21.1 not allowed because not listed in AllowGroups
Failed password for agent from 10.213.21.1 port 40004 ssh2
pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=x
Accepted publickey for agent from 10.213.21.1 port 40006 ssh2: ED25519 SHA256:abc
"""


def test_ssh_failures_are_counted_once_per_attempt():
    assert hc.count_ssh_failures(SSHD_JOURNAL.splitlines()) == 5
    assert hc.count_ssh_failures(["Accepted publickey for agent from 10.0.0.1"]) == 0


def test_ssh_failures_come_from_sshds_journal_over_the_window(tmp_path, monkeypatch):
    calls = []

    class Done:
        stdout = SSHD_JOURNAL

    def fake_run(command, **kwargs):
        calls.append(command)
        return Done()

    monkeypatch.setattr(hc.subprocess, "run", fake_run)
    path = _config(tmp_path, ssh={"comm": "sshd", "window_seconds": 600})
    hc.main(["--config", str(path), "--quiet"])
    text = _metrics(tmp_path)
    assert "rave_ssh_auth_failures_recent 5" in text
    assert "rave_ssh_auth_failures_window_seconds 600" in text
    (journal,) = [c for c in calls if c[0] == "journalctl"]
    assert "_COMM=sshd" in journal
    since = int(next(a for a in journal if a.startswith("--since=@")).split("@")[1])
    assert abs(time.time() - 600 - since) < 60


FAIL2BAN_STATUS = "Status\n|- Number of jail:\t2\n`- Jail list:\tnginx-http-auth, sshd\n"
FAIL2BAN_JAIL = (
    "Status for the jail: {jail}\n|- Filter\n|  |- Currently failed:\t1\n"
    "|  |- Total failed:\t9\n|  `- Journal matches:\t_SYSTEMD_UNIT=ssh.service\n"
    "`- Actions\n   |- Currently banned:\t{banned}\n   |- Total banned:\t{total}\n"
    "   `- Banned IP list:\t\n"
)


def test_fail2ban_bans_per_jail(tmp_path, monkeypatch):
    def fake_client(*args):
        if args == ("status",):
            return FAIL2BAN_STATUS
        return FAIL2BAN_JAIL.format(jail=args[1], banned=2 if args[1] == "sshd" else 0, total=7)

    monkeypatch.setattr(hc, "fail2ban_client", fake_client)
    path = _config(tmp_path, fail2ban=True)
    hc.main(["--config", str(path), "--quiet"])
    assert "rave_fail2ban" not in _metrics(tmp_path)  # one file per writer, never both
    text = _fail2ban_metrics(tmp_path)
    assert "rave_fail2ban_up 1" in text
    assert 'rave_fail2ban_banned{jail="sshd"} 2' in text
    assert 'rave_fail2ban_banned{jail="nginx-http-auth"} 0' in text
    assert 'rave_fail2ban_banned_total{jail="sshd"} 7' in text
    promtool = require_tool("promtool")
    lint = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_fail2ban_not_answering_is_a_metric_not_a_crash(tmp_path, monkeypatch):
    def broken(*args):
        raise subprocess.CalledProcessError(255, ["fail2ban-client", *args])

    monkeypatch.setattr(hc, "fail2ban_client", broken)
    path = _config(tmp_path, fail2ban=True)
    assert hc.main(["--config", str(path), "--quiet"]) == 0
    assert "rave_fail2ban_up 0" in _fail2ban_metrics(tmp_path)


def test_the_units_two_steps_split_fail2ban_from_the_checks(tmp_path, monkeypatch):
    """The unit's root step writes only fail2ban's file; its main step (the check's account)
    never asks fail2ban (its socket is root's) and leaves that file alone."""
    asked = []

    def fake_client(*args):
        asked.append(args)
        return (
            FAIL2BAN_STATUS
            if args == ("status",)
            else FAIL2BAN_JAIL.format(jail=args[1], banned=1, total=1)
        )

    monkeypatch.setattr(hc, "fail2ban_client", fake_client)
    path = _config(tmp_path, fail2ban=True)
    assert hc.main(["--config", str(path), "--fail2ban-only"]) == 0
    assert "rave_fail2ban_up 1" in _fail2ban_metrics(tmp_path)
    assert not (tmp_path / "textfile" / "rave_healthcheck.prom").exists()
    asked.clear()
    before = _fail2ban_metrics(tmp_path)
    assert hc.main(["--config", str(path), "--quiet", "--no-fail2ban"]) == 0
    assert asked == []
    assert _fail2ban_metrics(tmp_path) == before
    assert "rave_healthcheck_failed_checks 0" in _metrics(tmp_path)


def test_certificate_is_read_from_the_units_credential(tmp_path, certificate, monkeypatch):
    """Run by systemd as the check's account, the certificate is $CREDENTIALS_DIRECTORY/<name>
    (the configured path is not readable to it); the metric still names the path."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "tls").write_bytes(certificate(90).read_bytes())
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    path = _config(tmp_path, certificates=[{"name": "tls", "path": "/nonexistent/cert.pem"}])
    assert hc.main(["--config", str(path), "--quiet"]) == 0
    assert 'path="/nonexistent/cert.pem"' in _metrics(tmp_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_root_run_leaves_the_file_to_the_units_account(tmp_path):
    """An operator's run as root must not leave a root-owned file the unit's account (in the
    sticky textfile directory) could no longer replace; a link planted there is replaced, never
    followed or chowned."""
    directory = tmp_path / "textfile"
    directory.mkdir()
    os.chmod(directory, 0o1777)
    target = directory / "rave_healthcheck.prom"
    os.symlink("/etc/passwd", target)
    before = os.stat("/etc/passwd")
    hc.write_atomically(str(directory), target.name, "new\n", owner="nobody")
    assert not target.is_symlink() and target.read_text() == "new\n"
    assert target.stat().st_uid == pwd.getpwnam("nobody").pw_uid
    after = os.stat("/etc/passwd")
    assert (after.st_uid, after.st_mode) == (before.st_uid, before.st_mode)


def test_a_port_no_component_declares_is_reported(tmp_path):
    import socket

    with socket.socket() as declared, socket.socket() as stray:
        for sock in (declared, stray):
            sock.bind(("127.0.0.1", 0))
            sock.listen()
        ours, theirs = declared.getsockname()[1], stray.getsockname()[1]
        others = sorted(hc.listening_ports() - {theirs})
        path = _config(tmp_path, declared_ports=others)
        assert hc.main(["--config", str(path), "--quiet"]) == 0  # a metric, not a failed check
    text = _metrics(tmp_path)
    assert "rave_undeclared_listening_ports 1" in text
    assert f'rave_undeclared_listening_port{{port="{theirs}"}} 1' in text
    assert f'port="{ours}"' not in text
