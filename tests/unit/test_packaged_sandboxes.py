"""The sandboxes of the packaged daemons (nginx, PostgreSQL, fail2ban): what each may do, and
the exposure `systemd-analyze security --offline` gives Debian 12's units with the drop-ins."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from rave.sandbox import Sandbox, directives, dropin_text
from tasks.backup import PGBACKREST_LOG
from tasks.database import postgres_sandbox
from tasks.edge import SANDBOX as NGINX
from tasks.hardening import FAIL2BAN_SANDBOX as FAIL2BAN
from tests.tools import require_tool
from tests.unit.conftest import make_settings

POSTGRES = postgres_sandbox(make_settings())

# the [Service] sections of Debian 12's units (nginx 1.22, postgresql-common 248, fail2ban 1.0.2)
DEBIAN_UNITS = {
    "nginx.service": """[Service]
Type=forking
PIDFile=/run/nginx.pid
ExecStartPre=/usr/sbin/nginx -t -q -g 'daemon on; master_process on;'
ExecStart=/usr/sbin/nginx -g 'daemon on; master_process on;'
ExecReload=/usr/sbin/nginx -g 'daemon on; master_process on;' -s reload
ExecStop=-/sbin/start-stop-daemon --quiet --stop --retry QUIT/5 --pidfile /run/nginx.pid
TimeoutStopSec=5
KillMode=mixed
""",
    "postgresql@.service": """[Service]
Type=forking
ExecStart=-/usr/bin/pg_ctlcluster --skip-systemctl-redirect %i start
TimeoutStartSec=0
ExecStop=/usr/bin/pg_ctlcluster --skip-systemctl-redirect -m fast %i stop
TimeoutStopSec=1h
ExecReload=/usr/bin/pg_ctlcluster --skip-systemctl-redirect %i reload
PIDFile=/run/postgresql/%i.pid
SyslogIdentifier=postgresql@%i
OOMScoreAdjust=-900
""",
    "fail2ban.service": """[Service]
Type=simple
Environment="PYTHONNOUSERSITE=1"
ExecStartPre=/bin/mkdir -p /run/fail2ban
ExecStart=/usr/bin/fail2ban-server -xf start
ExecStop=/usr/bin/fail2ban-client stop
ExecReload=/usr/bin/fail2ban-client reload
PIDFile=/run/fail2ban/fail2ban.pid
Restart=on-failure
RestartPreventExitStatus=0 255
""",
}
# unit → (its sandbox, the highest exposure issue 17 allows)
CASES = {
    "nginx.service": (NGINX, 2.5),
    "postgresql@15-main.service": (POSTGRES, 2.5),
    "fail2ban.service": (FAIL2BAN, 5.0),
}


def _as_dict(sandbox: Sandbox) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for key, value in directives(sandbox, None):
        found.setdefault(key, []).append(value)
    return found


def test_nginx_keeps_only_the_switch_to_www_data_and_its_files():
    d = _as_dict(NGINX)
    caps = set(d["CapabilityBoundingSet"][0].split())
    assert caps == {"CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_DAC_OVERRIDE"}
    assert "CAP_NET_BIND_SERVICE" not in caps, "port 3002 needs no privilege"
    assert set(d["ReadWritePaths"][0].split()) == {"/var/log/nginx", "/var/lib/nginx", "/run"}
    assert d["MemoryDenyWriteExecute"] == ["yes"]
    assert not any("@privileged" in entry for entry in d["SystemCallFilter"]), "setuid"
    assert d["SystemCallErrorNumber"] == ["EPERM"]


def test_postgresql_runs_as_its_owner_without_capabilities_on_localhost():
    d = _as_dict(POSTGRES)
    assert d["User"] == ["postgres"] and d["Group"] == ["postgres"]
    assert d["CapabilityBoundingSet"] == [""]
    assert d["IPAddressAllow"] == ["localhost"] and d["IPAddressDeny"] == ["any"]
    writable = d["ReadWritePaths"][0].split()
    assert "/var/lib/postgresql" in writable and "/run/postgresql" in writable
    # archive_command (pgbackrest archive-push) writes its log and the posix repository
    assert f"-{PGBACKREST_LOG}" in writable
    assert "-/var/backups/rave/pgbackrest" in writable
    assert d["MemoryDenyWriteExecute"] == ["no"], "the LLVM JIT needs W+X"
    s3 = _as_dict(
        postgres_sandbox(
            make_settings(
                backup_pgbackrest_repo_type="s3",
                backup_pgbackrest_s3_endpoint="s3.example.org",
                backup_pgbackrest_s3_bucket="rave-pgbackrest",
                backup_pgbackrest_s3_region="eu-central-1",
            )
        )
    )
    # archive-push reaches the endpoint (a name); no posix repository to write
    assert s3["IPAddressAllow"] == ["any"] and s3["IPAddressDeny"] == ["any"]
    assert "-/var/backups/rave/pgbackrest" not in s3["ReadWritePaths"][0].split()


def test_fail2ban_may_ban_and_read_the_logs_only():
    d = _as_dict(FAIL2BAN)
    assert set(d["CapabilityBoundingSet"][0].split()) == {"CAP_NET_ADMIN", "CAP_DAC_READ_SEARCH"}
    assert "AF_NETLINK" in d["RestrictAddressFamilies"][0].split(), "nft talks netlink"
    assert d["RuntimeDirectory"] == ["fail2ban"]
    assert d["ReadWritePaths"] == ["/var/lib/fail2ban"]


@pytest.fixture(scope="module")
def offline_root(tmp_path_factory) -> Path:
    analyze = require_tool("systemd-analyze")
    help_text = subprocess.run([analyze, "security", "--help"], capture_output=True, text=True)
    assert "--offline" in help_text.stdout, "systemd-analyze without --offline (Debian 12 has it)"
    root = tmp_path_factory.mktemp("root")
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for name, text in DEBIAN_UNITS.items():
        (units / name).write_text(text)
    return root


@pytest.mark.parametrize("unit", sorted(CASES))
def test_exposure_of_the_debian_unit_with_the_dropin(offline_root, unit):
    sandbox, limit = CASES[unit]
    root = offline_root
    units = root / "etc/systemd/system"

    def exposure() -> float:
        report = subprocess.run(
            ["systemd-analyze", "security", "--no-pager", "--offline=yes", f"--root={root}", unit],
            capture_output=True,
            text=True,
        )
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", report.stdout)
        assert match, report.stdout + report.stderr
        return float(match.group(1))

    dropin = units / f"{unit}.d" / "sandbox.conf"
    dropin.unlink(missing_ok=True)
    assert exposure() > 9, "without the drop-in the unit is unconfined"
    dropin.parent.mkdir(exist_ok=True)
    dropin.write_text(dropin_text(sandbox, None, "test"))
    assert exposure() <= limit
