"""Custom pyinfra facts of the project, for ad-hoc questions and for the ops/ deploy files.

    pyinfra inventories/staging.py fact rave.facts.ProjectServices
    pyinfra inventories/staging.py fact rave.facts.DeployedRelease rave.facts.CertificateExpiry

pyinfra 3.10 resolves `rave.facts.ProjectServices` by importing the module `rave.facts` (it
tries the name as given before `pyinfra.facts.<name>`) and taking the attribute, so the
installed `rave` package is all it needs. Every fact reads only; none prints a secret: a fact
that touches a secret file (CertificateExpiry) outputs derived, public values only.
"""

from __future__ import annotations

import json
import shlex
import time
from typing import Any

from pyinfra.api import FactBase

from rave.components import COMPONENTS
from rave.modes import PROFILES, Mode

RELEASE_FILE = "/etc/rave/release.json"
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
BACKUP_METRIC = "rave_backup_last_success_timestamp_seconds"
TLS_CERTIFICATE = "/run/rave/secrets/nginx/tls_certificate"

# systemctl show properties, in the order ProjectServices asks for them
UNIT_PROPERTIES = (
    "Id",
    "LoadState",
    "ActiveState",
    "SubState",
    "UnitFileState",
    "MemoryCurrent",
    "MemoryMax",
    "ActiveEnterTimestamp",
    "NRestarts",
    "Type",
    "Result",
    "TriggeredBy",
)
_MARK = "@@rave-unit "
# where a unit's cgroup may be (v2, hybrid, v1's systemd hierarchy)
CGROUP_ROOTS = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd")

# Extra lines per unit, for units_command(..., extras=True):
# RSS=<bytes>: the resident memory of the unit's processes, for hosts where systemd has no
#   memory accounting (a container with a read-only cgroup v1 memory controller): MemoryCurrent
#   is "[not set]" there, so the limit cannot be compared without it.
# TimerState=<state>: for a unit started by a timer (a oneshot like the backup), the timer's.
_UNIT_EXTRAS = (
    'cg=$(systemctl show -p ControlGroup --value "$u" 2>/dev/null); '
    f"for r in {' '.join(CGROUP_ROOTS)}; do f=$r$cg/cgroup.procs; "
    # cgroup.procs lists 0 for processes outside the container's pid namespace: skipped
    'if [ -n "$cg" ] && [ -r "$f" ]; then p=$(sed -n "/^[1-9]/s|.*|/proc/&/status|p" "$f"); '
    'if [ -n "$p" ]; then grep -hs "^VmRSS:" $p | awk \'{s+=$2} END{print "RSS=" s*1024}\'; '
    "else echo RSS=0; fi; break; fi; done; "
    't=$(systemctl show -p TriggeredBy --value "$u" 2>/dev/null); '
    'if [ -n "$t" ]; then echo "TimerState=$(systemctl is-active $t 2>/dev/null)"; fi'
)


def project_units() -> dict[str, str]:
    """Component name → systemd service name, for every component of the project."""
    return {c.name: f"{c.unit}.service" for c in COMPONENTS}


def _int_or_none(value: str) -> int | None:
    value = value.strip()
    if not value or value in ("[not set]", "infinity") or not value.lstrip("-").isdigit():
        return None
    number = int(value)
    # systemd reports "no value" of a uint64 as 2^64-1
    return None if number >= 2**63 else number


def _timestamp(value: str) -> int | None:
    """`--timestamp=unix` gives '@1732730000'; an empty value means never."""
    value = value.strip()
    if value.startswith("@") and value[1:].isdigit():
        return int(value[1:]) or None
    return None


def parse_unit_blocks(lines: list[str]) -> dict[str, dict[str, str]]:
    """Split `@@rave-unit NAME` + `Key=Value` output into {NAME: {Key: Value}}."""
    blocks: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in lines:
        if line.startswith(_MARK):
            current = blocks.setdefault(line[len(_MARK) :].strip(), {})
        elif current is not None and "=" in line:
            key, _, value = line.partition("=")
            current[key.strip()] = value.strip()
    return blocks


def unit_state(props: dict[str, str]) -> dict[str, Any]:
    accounted = _int_or_none(props.get("MemoryCurrent", ""))
    rss = _int_or_none(props.get("RSS", ""))
    return {
        "unit": props.get("Id", ""),
        "present": props.get("LoadState") == "loaded",
        "load_state": props.get("LoadState", "unknown"),
        "active_state": props.get("ActiveState", "unknown"),
        "sub_state": props.get("SubState", ""),
        "enabled": props.get("UnitFileState", ""),
        "memory_current": accounted if accounted is not None else rss,
        "memory_source": "accounting" if accounted is not None else ("rss" if rss else None),
        "memory_max": _int_or_none(props.get("MemoryMax", "")),
        "active_since": _timestamp(props.get("ActiveEnterTimestamp", "")),
        "restarts": _int_or_none(props.get("NRestarts", "")) or 0,
        "type": props.get("Type", ""),
        "result": props.get("Result", ""),
        "timer": props.get("TriggeredBy") or None,
        "timer_state": props.get("TimerState"),
    }


def units_command(
    units: list[str], properties: tuple[str, ...] = UNIT_PROPERTIES, extras: bool = True
) -> str:
    props = ",".join(properties)
    names = " ".join(shlex.quote(unit) for unit in units)
    more = f"; {_UNIT_EXTRAS}" if extras else ""
    return (
        f"for u in {names}; do echo {shlex.quote(_MARK)}$u; "
        f'systemctl show --timestamp=unix -p {props} "$u" 2>/dev/null || true{more}; done'
    )


class ProjectServices(FactBase):
    """Every project unit (from rave.components) keyed by component name.

    Each value: unit, present (the unit exists on the host), load/active/sub state, enabled
    (UnitFileState), memory_current and memory_max in bytes (None: not set / unlimited),
    active_since (unix time of the last start), restarts (systemd's NRestarts).
    """

    @staticmethod
    def default() -> dict[str, dict[str, Any]]:
        return {}

    def command(self) -> str:
        return units_command(list(project_units().values()))

    def process(self, output: list[str]) -> dict[str, dict[str, Any]]:
        blocks = parse_unit_blocks(output)
        by_unit = {unit: name for name, unit in project_units().items()}
        return {
            by_unit[unit]: unit_state(props) for unit, props in blocks.items() if unit in by_unit
        }


class DeployedRelease(FactBase):
    """What tasks/release.py recorded at the end of the last deploy (None: never deployed)."""

    def command(self) -> str:
        return f"cat {RELEASE_FILE} 2>/dev/null || true"

    def process(self, output: list[str]) -> dict[str, Any] | None:
        text = "\n".join(output).strip()
        if not text:
            return None
        try:
            data = json.loads(text)
        except ValueError:
            return {"error": f"{RELEASE_FILE} is not JSON"}
        return data if isinstance(data, dict) else {"error": f"{RELEASE_FILE} is not an object"}


def infer_mode(memory_max: dict[str, int | None]) -> str | None:
    """The mode whose MemoryMax values the running units carry (component → bytes)."""
    limited = {name: value for name, value in memory_max.items() if value is not None}
    if not limited:
        return None
    for mode, profile in PROFILES.items():
        expected = {
            name: limits.memory_max_mb * 1024 * 1024 for name, limits in profile.limits.items()
        }
        if all(expected.get(name) == value for name, value in limited.items()):
            return mode.value
    return "mixed"


class RaveMode(FactBase):
    """The resource mode: as recorded by the last deploy, and as the units' limits show it."""

    @staticmethod
    def default() -> dict[str, Any]:
        return {"recorded": None, "effective": None}

    def command(self) -> str:
        units = [u for n, u in project_units().items() if n != "sshd"]
        return (
            f"echo {shlex.quote(_MARK)}release; cat {RELEASE_FILE} 2>/dev/null | tr -d '\\n'; "
            "echo; " + units_command(units, ("LoadState", "MemoryMax"), extras=False)
        )

    def process(self, output: list[str]) -> dict[str, Any]:
        recorded = None
        release_lines: list[str] = []
        unit_lines: list[str] = []
        target = None
        for line in output:
            if line.startswith(_MARK):
                target = release_lines if line == f"{_MARK}release" else unit_lines
                if target is unit_lines:
                    unit_lines.append(line)
                continue
            if target is not None:
                target.append(line)
        try:
            release = json.loads("".join(release_lines) or "null")
            if isinstance(release, dict) and release.get("mode") in {m.value for m in Mode}:
                recorded = release["mode"]
        except ValueError:
            pass
        by_unit = {unit: name for name, unit in project_units().items()}
        memory = {
            by_unit[unit]: _int_or_none(props.get("MemoryMax", ""))
            for unit, props in parse_unit_blocks(unit_lines).items()
            if unit in by_unit and props.get("LoadState") == "loaded"
        }
        return {"recorded": recorded, "effective": infer_mode(memory)}


def parse_textfile_metric(lines: list[str], metric: str) -> float | None:
    """The newest value of a Prometheus text-format metric across the given lines."""
    values = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split()[0]
        if name != metric:
            continue
        try:
            values.append(float(line.rsplit(None, 1)[-1]))
        except ValueError:
            continue
    return max(values) if values else None


class LastBackup(FactBase):
    """The last successful backup, from the backup's node-exporter textfile metric."""

    @staticmethod
    def default() -> dict[str, Any]:
        return {"timestamp": None, "age_seconds": None}

    def command(self) -> str:
        return f"cat {TEXTFILE_DIR}/*.prom 2>/dev/null || true; echo {_MARK}now $(date +%s)"

    def process(self, output: list[str]) -> dict[str, Any]:
        now = None
        for line in output:
            if line.startswith(f"{_MARK}now "):
                now = int(line.split()[-1])
        stamp = parse_textfile_metric(output, BACKUP_METRIC)
        if stamp is None or stamp <= 0:
            return {"timestamp": None, "age_seconds": None}
        return {
            "timestamp": int(stamp),
            "age_seconds": None if now is None else max(0, now - int(stamp)),
        }


_OPENSSL_MONTHS = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}


def parse_openssl_date(value: str) -> int | None:
    """'Nov 27 19:00:00 2027 GMT' → unix time (openssl's -enddate format)."""
    import calendar

    parts = value.split()
    if len(parts) < 4 or parts[0] not in _OPENSSL_MONTHS:
        return None
    try:
        hour, minute, second = (int(x) for x in parts[2].split(":"))
        return calendar.timegm(
            (int(parts[3]), _OPENSSL_MONTHS[parts[0]], int(parts[1]), hour, minute, second, 0, 0, 0)
        )
    except ValueError:
        return None


class CertificateExpiry(FactBase):
    """The edge's TLS certificate: subject, notAfter, days left (needs sudo: the file is 0400)."""

    @staticmethod
    def default() -> dict[str, Any]:
        return {"present": False}

    def requires_command(self) -> str:
        return "openssl"

    def command(self) -> str:
        return (
            f"if [ -r {TLS_CERTIFICATE} ]; then "
            f"openssl x509 -noout -enddate -subject -in {TLS_CERTIFICATE}; "
            f"else echo absent; fi; echo {_MARK}now $(date +%s)"
        )

    def process(self, output: list[str]) -> dict[str, Any]:
        result: dict[str, Any] = {"present": False}
        now = int(time.time())
        for line in output:
            if line.startswith("notAfter="):
                result["present"] = True
                result["not_after"] = line.split("=", 1)[1].strip()
                result["not_after_unix"] = parse_openssl_date(result["not_after"])
            elif line.startswith("subject="):
                result["subject"] = line.split("=", 1)[1].strip()
            elif line.startswith(f"{_MARK}now "):
                now = int(line.split()[-1])
        if result.get("not_after_unix") is not None:
            result["days_left"] = (result["not_after_unix"] - now) // 86400
        return result


class JournalTail(FactBase):
    """The last `lines` journal lines of each given unit (for ops/service.py logs)."""

    @staticmethod
    def default() -> dict[str, list[str]]:
        return {}

    def command(self, units: list[str], lines: int = 30) -> str:
        names = " ".join(shlex.quote(unit) for unit in units)
        return (
            f"for u in {names}; do echo {shlex.quote(_MARK)}$u; "
            f'journalctl --no-pager -o short-iso -n {int(lines)} -u "$u" 2>&1 || true; done'
        )

    def process(self, output: list[str]) -> dict[str, list[str]]:
        result: dict[str, list[str]] = {}
        current: list[str] | None = None
        for line in output:
            if line.startswith(_MARK):
                current = result.setdefault(line[len(_MARK) :].strip(), [])
            elif current is not None:
                current.append(line)
        return result


_SECTION = "@@rave-section "
SYSCTL_GLOB = "/etc/sysctl.d/*rave*.conf"
HARDENING_REPORT = "/var/lib/rave-hardening/report.json"


def _sections(lines: list[str]) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        if line.startswith(_SECTION):
            current = sections.setdefault(line[len(_SECTION) :].strip(), [])
        elif current is not None:
            current.append(line)
    return sections


APT_LISTS = "/var/lib/apt/lists"


# tasks/backup.py: PGBACKREST and wal_archive_conf() (rave must not import tasks)
PGBACKREST = "/usr/local/sbin/rave-pgbackrest"
WAL_ARCHIVE_CONF = "/etc/postgresql/*/main/conf.d/rave-wal-archive.conf"


class ValidationProbe(FactBase):
    """Everything the host-side validation stages look at, gathered in one round trip (sudo).

    The raw sections are parsed by rave.ops.validate; nothing secret is read.
    """

    @staticmethod
    def default() -> dict[str, Any]:
        return {"ok": False}

    def command(self) -> str:
        from rave.ops.validate import EXTRA_UNITS, webhook_health_url

        units = [*project_units().values(), *EXTRA_UNITS]
        sysctl_loop = (
            f'for f in {SYSCTL_GLOB}; do [ -f "$f" ] && grep -E \'^[[:space:]]*[a-z]\' "$f"; '
            "done | while IFS='=' read -r k v; do k=$(echo $k); "
            'echo "$k|$v|$(sysctl -n "$k" 2>&1)"; done'
        )
        parts = {
            "os": "grep -E '^(ID|VERSION_ID)=' /etc/os-release",
            "hostname": "hostname",
            "meminfo": "grep MemTotal /proc/meminfo",
            "sshd": "sshd -T 2>/dev/null",
            "nft": "nft list ruleset 2>&1",
            "fail2ban": "fail2ban-client status 2>&1",
            "sysctl": sysctl_loop,
            "units": units_command(units),
            "listeners": "ss -Hltn",
            "release": f"cat {RELEASE_FILE} 2>/dev/null",
            "hardening_report": f"cat {HARDENING_REPORT} 2>/dev/null",
            "webhook_health": f"curl -sf --max-time 5 {webhook_health_url()}",
            # where PostgreSQL archives with pgBackRest: `pgbackrest check` (a WAL segment pushed
            # and found in the repository); its last lines and exit code
            "pgbackrest": (
                f"if grep -qs 'archive-push' {WAL_ARCHIVE_CONF}; then "
                f"out=$(cd / && runuser -u postgres -- {PGBACKREST} check 2>&1); rc=$?; "
                'printf \'%s\\n\' "$out" | tail -n 3; echo "rc=$rc"; fi'
            ),
            # mtime (epoch) and name of apt's security-suite Release files, and the host's clock
            "apt_security": (
                f"find {APT_LISTS} -maxdepth 1 -name '*_dists_*-security_*Release' "
                "-printf '%T@ %f\\n'; echo now $(date +%s)"
            ),
        }
        return "; ".join(
            f"echo {shlex.quote(_SECTION + name)}; {{ {command}; }} || true"
            for name, command in parts.items()
        )

    def process(self, output: list[str]) -> dict[str, Any]:
        sections = _sections(output)
        os_release = {}
        for line in sections.get("os", []):
            key, _, value = line.partition("=")
            os_release[key] = value.strip().strip('"')
        memtotal = 0
        for line in sections.get("meminfo", []):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                memtotal = int(parts[1])
        blocks = parse_unit_blocks(sections.get("units", []))
        by_unit = {unit: name for name, unit in project_units().items()}
        units = {by_unit.get(unit, unit): unit_state(props) for unit, props in blocks.items()}
        release = DeployedRelease().process(sections.get("release", []))
        try:
            hardening = json.loads("\n".join(sections.get("hardening_report", [])) or "{}")
        except ValueError:
            hardening = {}
        try:
            webhook_health = json.loads("\n".join(sections.get("webhook_health", [])))
        except ValueError:
            webhook_health = None  # the receiver did not answer
        pgbackrest_lines = sections.get("pgbackrest", [])
        pgbackrest = None
        if pgbackrest_lines and pgbackrest_lines[-1].startswith("rc="):
            code = pgbackrest_lines[-1].removeprefix("rc=")
            pgbackrest = {
                "rc": int(code) if code.isdigit() else -1,
                "tail": " ".join(pgbackrest_lines[:-1]),
            }
        return {
            "ok": True,
            "os": os_release,
            "hostname": "".join(sections.get("hostname", [])).strip(),
            "memtotal_kb": memtotal,
            "sshd": sections.get("sshd", []),
            "nft": sections.get("nft", []),
            "fail2ban": sections.get("fail2ban", []),
            "sysctl": sections.get("sysctl", []),
            "units": units,
            "listeners": sections.get("listeners", []),
            "release": release,
            "hardening_report": hardening if isinstance(hardening, dict) else {},
            "webhook_health": webhook_health if isinstance(webhook_health, dict) else None,
            "apt_security": sections.get("apt_security", []),
            "pgbackrest": pgbackrest,
        }


SECRETS_ENCRYPTED = "/etc/rave/secrets.age"  # rave.secrets.deploy.REMOTE_ENCRYPTED
SECRETS_ROOT = "/run/rave/secrets"  # rave.secrets.deploy.SECRETS_ROOT
HOST_KEY_PUB = "/etc/ssh/ssh_host_ed25519_key.pub"  # the host's age recipient


def ssh_key_tag(key: str) -> str | None:
    """age's stanza tag of an ssh-ed25519 recipient (rave.secrets.crypto), None if not one."""
    from rave.secrets.crypto import ssh_key_tag as tag_of

    parts = key.split()
    if len(parts) < 2 or parts[0] != "ssh-ed25519":
        return None
    try:
        return tag_of(key)
    except ValueError:
        return None


class SecretsRecipientStatus(FactBase):
    """Can this host decrypt its secrets? (needs sudo; outputs public data only)

    host_key: the host's ssh-ed25519 public key (its age recipient); encrypted_to_host: the
    copy in /etc/rave/secrets.age has a stanza for that key (read from the age header, no key
    needed); recipients: stanzas in that file; service: rave-secrets.service state;
    secret_files: how many decrypted files are in /run/rave/secrets.
    """

    @staticmethod
    def default() -> dict[str, Any]:
        return {}

    def command(self) -> str:
        header = (
            f"sed '1d;$d' {SECRETS_ENCRYPTED} | base64 -d 2>/dev/null | head -c 16384 "
            "| sed -n '/^---/q;/^-> /p' | cut -c1-40"
        )
        return "; ".join(
            [
                f"echo {_SECTION}key; cat {HOST_KEY_PUB} 2>/dev/null || true",
                f"echo {_SECTION}stanzas; if [ -f {SECRETS_ENCRYPTED} ]; then "
                f"echo present; {header}; fi",
                f"echo {_SECTION}service; "
                "systemctl show -p ActiveState,SubState,Result rave-secrets.service || true",
                f"echo {_SECTION}files; find {SECRETS_ROOT} -type f 2>/dev/null | wc -l",
            ]
        )

    def process(self, output: list[str]) -> dict[str, Any]:
        sections = _sections(output)
        key = " ".join("".join(sections.get("key", [])).split()[:2])
        tag = ssh_key_tag(key) if key else None
        stanzas = sections.get("stanzas", [])
        tags = {
            line.split()[2]
            for line in stanzas
            if line.startswith("-> ssh-ed25519 ") and len(line.split()) >= 3
        }
        service = dict(line.split("=", 1) for line in sections.get("service", []) if "=" in line)
        files = "".join(sections.get("files", [])).strip()
        return {
            "host_key": key or None,
            "encrypted_file": "present" in stanzas,
            "recipients": sum(1 for line in stanzas if line.startswith("-> ")),
            "encrypted_to_host": tag is not None and tag in tags,
            "service": f"{service.get('ActiveState', '?')}/{service.get('SubState', '?')}",
            "service_result": service.get("Result"),
            "secret_files": int(files) if files.isdigit() else 0,
        }


class StatOverrides(FactBase):
    """`dpkg-statoverride --list`: path → (user, group, mode)."""

    def command(self) -> str:
        return "dpkg-statoverride --list 2>/dev/null || true"

    def process(self, output: list[str]) -> dict[str, tuple[str, str, str]]:
        from rave.observability import parse_stat_overrides

        return parse_stat_overrides(output)
