"""Deployment validation in six stages; pure evaluation of what the probes gathered.

Stages: connectivity (SSH + host facts), security (sshd -T, nftables, fail2ban, sysctl),
services (running + enabled), ports (listeners on the host, reachability from the control
machine), application (the webhook queue from the receiver's /healthz on the host; routes
through nginx from the control machine), resources (mode limits).

Host-side data comes from one fact (rave.facts.ValidationProbe); control-side data from
`probe_ports` and `probe_application` below. `evaluate()` turns both into Check rows.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import hmac
import json
import re
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from rave.components import BY_NAME, COMPONENTS, loopback_ports, public_ports
from rave.ops.report import table
from rave.settings import HostSettings

STAGES = ("connectivity", "security", "services", "ports", "application", "resources")

# effective sshd settings (`sshd -T`, lower-case) every hardened host has
EXPECTED_SSHD = {
    "permitrootlogin": "no",
    "passwordauthentication": "no",
    "kbdinteractiveauthentication": "no",
    "permitemptypasswords": "no",
    "pubkeyauthentication": "yes",
    "x11forwarding": "no",
}
SSH_GROUP = "rave-ssh"
REQUIRED_JAILS = ("sshd",)
# ports probed from the control machine besides the components' own: must all be closed
EXTRA_CLOSED_PORTS = (80, 443, 3000, 8000, 8080, 9999)
# units that are not components but must run on a deployed host
EXTRA_UNITS = ("rave-secrets.service",)
# path of the public status page behind nginx, and the webhook signature contract
STATUS_PATH = "/"
WEBHOOK_PATH = "/webhook"
# the webhook accepts GitHub-style deliveries (rave/webhook/verify.py)
SIGNATURE_HEADER = "X-Hub-Signature-256"
EVENT_HEADER = "X-GitHub-Event"
DELIVERY_HEADER = "X-GitHub-Delivery"
TEST_EVENT = "rave-ops.validation"
# the receiver's own view of its queue (GET /healthz on loopback, rave/webhook/app.py): fail
# while undrained deliveries wait longer than this without the drainer moving on, or while dead
# letters wait. The same limit: files/ops/rave-validate-host, files/healthcheck/rave-healthcheck
# and the WebhookSpoolNotDraining alert (files/prometheus/rules/rave.yml).
SPOOL_STALLED_MAX_SECONDS = 120
WEBHOOK_HEALTH_PATH = "/healthz"


@dataclass(frozen=True)
class Check:
    host: str
    stage: str
    name: str
    ok: bool
    detail: str = ""


@dataclass
class ControlResults:
    """What the control machine saw: port → reachable, and named HTTP checks."""

    address: str
    ports: dict[int, bool] = field(default_factory=dict)
    http: dict[str, tuple[bool, str]] = field(default_factory=dict)


# --- parsing of the probe's raw sections ---------------------------------------------------


def parse_sshd(lines: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in lines:
        key, _, value = line.strip().partition(" ")
        if key and value and key.islower():
            # repeated keys (allowgroups, listenaddress) are joined
            values[key] = f"{values[key]} {value}".strip() if key in values else value.strip()
    return values


_DPORT = re.compile(r"\btcp dport (\{[^}]*\}|[\w-]+)")
_SADDR = re.compile(r"\b(ip6?) saddr\b")


def _ports_of(spec: str) -> set[int]:
    ports: set[int] = set()
    for item in (part.strip() for part in spec.strip("{} ").split(",")):
        if "-" in item and item.replace("-", "").isdigit():
            low, high = (int(x) for x in item.split("-", 1))
            ports.update(range(low, high + 1))
        elif item.isdigit():
            ports.add(int(item))
        elif item == "ssh":
            ports.add(22)
    return ports


def nft_input_accepts(lines: list[str]) -> tuple[set[int], set[int]]:
    """TCP ports accepted in input hook chains: (from anyone, from listed sources only)."""
    public: set[int] = set()
    restricted: set[int] = set()
    in_input = False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith(("chain ", "table ")):
            in_input = False
        if "hook input" in stripped:
            in_input = True
        if not in_input or not stripped.endswith("accept"):
            continue
        for match in _DPORT.finditer(stripped):
            target = restricted if _SADDR.search(stripped) else public
            target.update(_ports_of(match.group(1)))
    return public, restricted


def nft_accepted_tcp_ports(lines: list[str]) -> set[int]:
    """TCP ports an `nft list ruleset` accepts from anyone in an input hook chain."""
    return nft_input_accepts(lines)[0]


def nft_input_policy(lines: list[str]) -> str | None:
    """`drop` if any input hook chain drops by default (the project's table), else the first."""
    policies = []
    for line in lines:
        if "hook input" in line:
            match = re.search(r"policy (\w+)", line)
            policies.append(match.group(1) if match else None)
    if "drop" in policies:
        return "drop"
    return policies[0] if policies else None


def parse_jails(lines: list[str]) -> list[str]:
    for line in lines:
        if "Jail list:" in line:
            return [j.strip() for j in line.split("Jail list:", 1)[1].split(",") if j.strip()]
    return []


def parse_listeners(lines: list[str]) -> list[tuple[str, int]]:
    """(address, port) of every listening TCP socket in `ss -Hltn` output."""
    result = []
    for line in lines:
        parts = line.split()
        if len(parts) < 4:
            continue
        local = parts[3]
        address, _, port = local.rpartition(":")
        if not port.isdigit():
            continue
        result.append((address.strip("[]"), int(port)))
    return result


def is_loopback(address: str) -> bool:
    address = address.split("%", 1)[0]
    return (
        address.startswith("127.")
        or address in ("::1", "localhost")
        or address.startswith("::ffff:127.")
    )


def parse_sysctl(lines: list[str]) -> list[tuple[str, str, str]]:
    """Lines 'key|expected|actual' → tuples, whitespace-normalised."""
    rows = []
    for line in lines:
        if line.count("|") < 2:
            continue
        key, expected, actual = line.split("|", 2)
        rows.append((key.strip(), " ".join(expected.split()), " ".join(actual.split())))
    return rows


# --- evaluation --------------------------------------------------------------------------


DETAIL_MAX = 110


def _check(host: str, stage: str, name: str, ok: bool, detail: str = "") -> Check:
    detail = " ".join(detail.split())
    if len(detail) > DETAIL_MAX:
        detail = detail[: DETAIL_MAX - 3] + "..."
    return Check(host, stage, name, bool(ok), detail)


def evaluate(
    host: str,
    config: HostSettings,
    probe: dict[str, Any] | None,
    control: ControlResults | None,
) -> list[Check]:
    checks: list[Check] = []
    if not probe or not probe.get("ok"):
        return [_check(host, "connectivity", "ssh and facts", False, "no answer from the host")]
    checks += _connectivity(host, config, probe)
    checks += _security(host, probe)
    checks += [security_lists_check(host, config, probe.get("apt_security", []))]
    checks += _services(host, probe)
    checks += _ports(host, probe, control)
    checks += _webhook_queue(host, probe)
    checks += _pgbackrest(host, probe)
    checks += _application(host, control)
    checks += _resources(host, config, probe)
    return checks


def _connectivity(host: str, config: HostSettings, probe: dict[str, Any]) -> list[Check]:
    os_release = probe.get("os", {})
    debian = os_release.get("ID") == "debian" and os_release.get("VERSION_ID") == "12"
    release = probe.get("release") or {}
    return [
        _check(host, "connectivity", "ssh and facts", True, f"{len(probe)} sections gathered"),
        _check(
            host,
            "connectivity",
            "Debian 12",
            debian,
            f"{os_release.get('ID', '?')} {os_release.get('VERSION_ID', '?')}",
        ),
        _check(
            host,
            "connectivity",
            "hostname",
            probe.get("hostname") == config.hostname,
            f"{probe.get('hostname')} (expected {config.hostname})",
        ),
        _check(
            host,
            "connectivity",
            "deployed release",
            bool(release.get("commit")),
            f"{release.get('commit', 'none')[:12]} mode {release.get('mode', '?')}"
            if release
            else "no /etc/rave/release.json",
        ),
    ]


def _security(host: str, probe: dict[str, Any]) -> list[Check]:
    checks = []
    sshd = parse_sshd(probe.get("sshd", []))
    if not sshd:
        checks.append(_check(host, "security", "sshd -T", False, "no effective sshd config"))
    else:
        wrong = {
            key: sshd.get(key, "?") for key, want in EXPECTED_SSHD.items() if sshd.get(key) != want
        }
        checks.append(
            _check(
                host,
                "security",
                "sshd effective config",
                not wrong,
                "; ".join(f"{k}={v} (want {EXPECTED_SSHD[k]})" for k, v in wrong.items())
                or ", ".join(f"{k}={v}" for k, v in EXPECTED_SSHD.items()),
            )
        )
        groups = sshd.get("allowgroups", "").split()
        checks.append(
            _check(
                host,
                "security",
                "sshd AllowGroups",
                SSH_GROUP in groups,
                f"allowgroups={' '.join(groups) or '(none)'}",
            )
        )
    nft = probe.get("nft", [])
    policy = nft_input_policy(nft)
    checks.append(
        _check(host, "security", "nft input policy drop", policy == "drop", f"policy={policy}")
    )
    accepted = nft_accepted_tcp_ports(nft)
    extra = sorted(accepted - set(public_ports()))
    missing = sorted(set(public_ports()) - accepted)
    checks.append(
        _check(
            host,
            "security",
            "nft public ports",
            not extra and not missing,
            f"accepted tcp {sorted(accepted)}"
            + (f"; unexpected {extra}" if extra else "")
            + (f"; missing {missing}" if missing else ""),
        )
    )
    jails = parse_jails(probe.get("fail2ban", []))
    absent = [jail for jail in REQUIRED_JAILS if jail not in jails]
    checks.append(
        _check(
            host,
            "security",
            "fail2ban jails",
            not absent,
            f"jails {jails}" + (f"; missing {absent}" if absent else ""),
        )
    )
    sysctls = parse_sysctl(probe.get("sysctl", []))
    # keys the deploy reported it cannot set here (a container's read-only kernel keys)
    reported = (probe.get("hardening_report") or {}).get("exceptions", {}).get("sysctl", {})
    excused = [k for k, e, a in sysctls if e != a and k in reported]
    differing = [f"{k}={a!r} (want {e!r})" for k, e, a in sysctls if e != a and k not in reported]
    detail = (
        f"{len(sysctls) - len(excused)} keys as configured"
        + (f", {len(excused)} reported unsettable by the deploy" if excused else "")
        if sysctls
        else "no rave sysctl file"
    )
    checks.append(
        _check(
            host,
            "security",
            "sysctl hardening",
            bool(sysctls) and not differing,
            "; ".join(differing) if differing else detail,
        )
    )
    return checks


def parse_release_files(lines: list[str]) -> tuple[dict[str, float], float | None]:
    """`<mtime> <name>` lines of apt's security Release files and `now <epoch>` (the probe)."""
    files: dict[str, float] = {}
    now = None
    for line in lines:
        first, _, rest = line.strip().partition(" ")
        try:
            if first == "now":
                now = float(rest)
            elif rest:
                files[rest.strip()] = float(first)
        except ValueError:
            continue
    return files, now


SECURITY_LISTS_CHECK = "security updates lists"


def security_lists_check(host: str, config: HostSettings, lines: list[str]) -> Check:
    """apt fetched the security suite recently: unattended-upgrades takes updates from it."""
    files, now = parse_release_files(lines)
    limit = config.apt_security_lists_max_age_days
    if not files or now is None:
        return _check(
            host,
            "security",
            SECURITY_LISTS_CHECK,
            False,
            "no bookworm-security Release file in /var/lib/apt/lists (is the suite in "
            "debian.sources? run apt-get update)",
        )
    name, mtime = max(files.items(), key=lambda item: item[1])
    age_days = (now - mtime) / 86400
    ok = age_days <= limit
    return _check(
        host,
        "security",
        SECURITY_LISTS_CHECK,
        ok,
        f"{name} {age_days:.1f} days old (maximum {limit})"
        + ("" if ok else ": stale, run apt-get update and check the egress"),
    )


_ENABLED_OK = {"enabled", "enabled-runtime", "static", "generated", "indirect", "alias"}


def _services(host: str, probe: dict[str, Any]) -> list[Check]:
    checks = []
    units: dict[str, dict[str, Any]] = probe.get("units", {})
    for component in COMPONENTS:
        state = units.get(component.name)
        if not state or not state.get("present"):
            if not component.optional:
                checks.append(
                    _check(host, "services", component.name, False, f"{component.unit} missing")
                )
            continue
        if state.get("type") == "oneshot" and state.get("timer"):
            # started by its timer (e.g. the backup): the timer runs, the last run succeeded
            ok = (
                state["active_state"] != "failed"
                and state.get("result") in ("success", "")
                and state.get("timer_state") == "active"
            )
            detail = (
                f"{state['unit']} oneshot, last result {state.get('result') or '-'}; "
                f"{state['timer']} {state.get('timer_state')}"
            )
            checks.append(_check(host, "services", component.name, ok, detail))
            continue
        running = state["active_state"] == "active"
        enabled = state["enabled"] in _ENABLED_OK
        checks.append(
            _check(
                host,
                "services",
                component.name,
                running and enabled,
                f"{state['unit']} {state['active_state']}/{state['sub_state']}, {state['enabled']}",
            )
        )
    for unit in EXTRA_UNITS:
        state = units.get(unit)
        if state and state.get("present"):
            checks.append(
                _check(
                    host,
                    "services",
                    unit.removesuffix(".service"),
                    state["active_state"] == "active",
                    f"{state['active_state']}/{state['sub_state']}",
                )
            )
    return checks


def _ports(host: str, probe: dict[str, Any], control: ControlResults | None) -> list[Check]:
    checks = []
    listeners = parse_listeners(probe.get("listeners", []))
    public = set(public_ports())
    exposed = sorted({f"{a}:{p}" for a, p in listeners if not is_loopback(a) and p not in public})
    checks.append(
        _check(
            host,
            "ports",
            "only 22/3002 on non-loopback",
            not exposed,
            f"unexpected listeners {exposed}" if exposed else f"public {sorted(public)}",
        )
    )
    listening = {p for _, p in listeners}
    absent = sorted(public - listening)
    checks.append(
        _check(
            host,
            "ports",
            "public ports listening",
            not absent,
            f"not listening {absent}" if absent else "",
        )
    )
    # every port an installed component declares is served (a unit can be "active" between
    # crash-restarts, or started but not serving: the port is what clients need)
    units: dict[str, dict[str, Any]] = probe.get("units", {})
    declared = sorted(
        (c.name, port.number)
        for c in COMPONENTS
        if units.get(c.name, {}).get("present") and not c.scheduled
        for port in c.ports
    )
    silent = [f"{name}:{number}" for name, number in declared if number not in listening]
    internal = sorted({p for a, p in listeners if is_loopback(a)} & set(loopback_ports()))
    checks.append(
        _check(
            host,
            "ports",
            "declared ports listening",
            not silent,
            f"not listening {silent}" if silent else f"loopback {internal}",
        ),
    )
    if control is None:
        return checks
    reachable = sorted(p for p, ok in control.ports.items() if ok)
    wrong_open = sorted(p for p in reachable if p not in public)
    wrong_closed = sorted(p for p in public if not control.ports.get(p))
    checks.append(
        _check(
            host,
            "ports",
            f"reachable from control ({control.address})",
            not wrong_open and not wrong_closed,
            f"open {reachable} of {len(control.ports)} probed"
            + (f"; must be closed {wrong_open}" if wrong_open else "")
            + (f"; must be open {wrong_closed}" if wrong_closed else ""),
        )
    )
    return checks


def webhook_health_url() -> str:
    port = next(p.number for p in BY_NAME["webhook"].ports)
    return f"http://127.0.0.1:{port}{WEBHOOK_HEALTH_PATH}"


def webhook_queue_checks(health: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """(name, ok, detail) of the spool and the dead letters, from the receiver's /healthz."""
    stalled = float(health.get("stalled_seconds") or 0)
    records = int(health.get("spool_records") or 0)
    if stalled > SPOOL_STALLED_MAX_SECONDS:
        draining = f"stalled {stalled:.0f} s with {records} records"
        if health.get("dead_letter_store_full"):
            draining += " (the dead-letter store is full)"
        elif health.get("db") is False:
            draining += " (writes to PostgreSQL fail)"
    else:
        draining = f"{records} records waiting (limit: stalled {SPOOL_STALLED_MAX_SECONDS} s)"
    letters = int(health.get("dead_letters") or 0)
    full = bool(health.get("dead_letter_store_full"))
    if full:
        dead = f"store FULL, the drain stops: {letters} waiting (rave-ops dead-letters list)"
    elif letters:
        dead = f"{letters} waiting (rave-ops dead-letters list)"
    else:
        dead = "none"
    return [
        ("webhook spool draining", stalled <= SPOOL_STALLED_MAX_SECONDS, draining),
        ("webhook dead letters", letters == 0 and not full, dead),
    ]


def _webhook_queue(host: str, probe: dict[str, Any]) -> list[Check]:
    if not probe.get("units", {}).get("webhook", {}).get("present"):
        return []
    health = probe.get("webhook_health")
    if not isinstance(health, dict):
        return [
            _check(
                host,
                "application",
                "webhook health",
                False,
                f"no JSON answer from {webhook_health_url()}",
            )
        ]
    return [
        _check(host, "application", name, ok, detail)
        for name, ok, detail in webhook_queue_checks(health)
    ]


def _pgbackrest(host: str, probe: dict[str, Any]) -> list[Check]:
    """`pgbackrest check` where PostgreSQL archives with pgBackRest (the probe ran it)."""
    result = probe.get("pgbackrest")
    if not isinstance(result, dict):
        return []
    ok = result.get("rc") == 0
    detail = "WAL pushed and found in the repository" if ok else str(result.get("tail") or "")
    return [_check(host, "application", "pgbackrest check", ok, detail or f"exit {result['rc']}")]


def _application(host: str, control: ControlResults | None) -> list[Check]:
    if control is None:
        return []
    return [
        _check(host, "application", name, ok, detail) for name, (ok, detail) in control.http.items()
    ]


def _resources(host: str, config: HostSettings, probe: dict[str, Any]) -> list[Check]:
    checks = []
    profile = config.profile
    units: dict[str, dict[str, Any]] = probe.get("units", {})
    for name, limits in profile.limits.items():
        state = units.get(name)
        if not state or not state.get("present"):
            continue
        want = limits.memory_max_mb * 1024 * 1024
        have, current = state.get("memory_max"), state.get("memory_current")
        mode = f"(mode {config.rave_mode.value}: {limits.memory_max_mb}M)"
        if state["active_state"] != "active":
            # not running (a oneshot between runs): only the limit can be checked
            ok, detail = have == want, f"not running; MemoryMax {_mb(have)} {mode}"
        else:
            within = have is not None and current is not None and current < have
            source = " (RSS)" if state.get("memory_source") == "rss" else ""
            ok = have == want and within
            detail = f"{_mb(current)}{source} of MemoryMax {_mb(have)} {mode}"
        checks.append(_check(host, "resources", f"{name} memory", ok, detail))
    total_kb = probe.get("memtotal_kb") or 0
    checks.append(
        _check(
            host,
            "resources",
            "host memory",
            total_kb // 1024 >= profile.host_memory_min_mb,
            f"{total_kb // 1024} MB (mode {config.rave_mode.value} needs "
            f"{profile.host_memory_min_mb} MB)",
        )
    )
    return checks


def _mb(value: int | None) -> str:
    return "unset" if value is None else f"{value // (1024 * 1024)}M"


# --- control-machine probes ----------------------------------------------------------------


def tcp_reachable(address: str, port: int, timeout: float = 1.5) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def ports_to_probe() -> list[int]:
    ports = {p.number for c in COMPONENTS for p in c.ports} | set(EXTRA_CLOSED_PORTS)
    return sorted(ports)


def probe_ports(address: str, ports: list[int] | None = None) -> dict[int, bool]:
    ports = ports or ports_to_probe()
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(ports)) as pool:
        results = pool.map(lambda p: (p, tcp_reachable(address, p)), ports)
    return dict(results)


def sign(secret: str, body: bytes) -> str:
    """X-Hub-Signature-256 of a body (GitHub's scheme, as rave/webhook/verify.py checks it)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def first_secret(text: str) -> str | None:
    """The newest active HMAC secret from the JSON list stored on the host."""
    try:
        secrets = json.loads(text)
    except ValueError:
        return None
    if isinstance(secrets, str) and secrets:
        return secrets
    if isinstance(secrets, list) and secrets and isinstance(secrets[0], str):
        return secrets[0]
    return None


def probe_application(
    address: str,
    port: int,
    hmac_secret: str | None,
    installed: set[str],
    timeout: float = 10.0,
) -> dict[str, tuple[bool, str]]:
    import requests
    import urllib3

    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    base = f"https://{address}:{port}"
    results: dict[str, tuple[bool, str]] = {}

    def request(name: str, method: str, path: str, want: int, **kwargs: Any) -> None:
        try:
            # the staging certificate is self-signed: the TLS chain is checked by
            # CertificateExpiry / the edge tests, this checks the routes behind it
            response = requests.request(
                method, base + path, timeout=timeout, verify=False, allow_redirects=False, **kwargs
            )
            results[name] = (response.status_code == want, f"{response.status_code} (want {want})")
        except requests.RequestException as error:
            results[name] = (False, f"{type(error).__name__}: {str(error)[:80]}")

    request("status page", "GET", STATUS_PATH, 200)
    delivery = f"rave-ops-{uuid.uuid4()}"  # new each run: a repeated delivery would get 200
    body = json.dumps(
        {"event": TEST_EVENT, "delivery": delivery, "sent_at": int(time.time())}
    ).encode()
    headers = {
        "Content-Type": "application/json",
        EVENT_HEADER: TEST_EVENT,
        DELIVERY_HEADER: delivery,
    }
    if hmac_secret is None:
        results["signed webhook accepted"] = (False, "no HMAC secret readable on the host")
    else:
        signed = {**headers, SIGNATURE_HEADER: sign(hmac_secret, body)}
        request("signed webhook accepted", "POST", WEBHOOK_PATH, 202, data=body, headers=signed)
    unsigned = {"Content-Type": "application/json"}
    request("unsigned webhook refused", "POST", WEBHOOK_PATH, 401, data=body, headers=unsigned)
    if "grafana" in installed:
        request("grafana health", "GET", "/grafana/api/health", 200)
    if "ccr" in installed and BY_NAME["ccr"].route is not None:
        request("ccr-ui needs auth", "GET", BY_NAME["ccr"].route.path, 401)
    return results


# --- report --------------------------------------------------------------------------------


def report(checks: list[Check]) -> str:
    order = {stage: i for i, stage in enumerate(STAGES)}
    rows = [
        [c.host, f"{order[c.stage] + 1}.{c.stage}", c.name, "PASS" if c.ok else "FAIL", c.detail]
        for c in sorted(checks, key=lambda c: (c.host, order[c.stage]))
    ]
    failed = [c for c in checks if not c.ok]
    summary = f"validation: {len(checks) - len(failed)}/{len(checks)} checks passed" + (
        "; FAILED: " + ", ".join(f"{c.host} {c.stage}/{c.name}" for c in failed) if failed else ""
    )
    return table(("HOST", "STAGE", "CHECK", "RESULT", "DETAIL"), rows) + "\n" + summary


# --- the pyinfra side (ops/validate.py) ----------------------------------------------------


def hmac_secrets_file() -> str:
    from rave.secrets.deploy import secret_path

    return secret_path("webhook", "webhook_hmac_secrets")


def read_hmac_secret(host: Any) -> str | None:
    """Read the webhook secret on the host via sudo into memory: never printed or logged."""
    from pyinfra.api import StringCommand

    ok, output = host.run_shell_command(
        StringCommand("cat", hmac_secrets_file()), _sudo=True, print_output=False, print_input=False
    )
    return first_secret(output.stdout) if ok else None


def edge_port() -> int:
    return next(p.number for p in BY_NAME["nginx"].ports if p.exposure.value == "public")


def checks_for_current_host(host: Any, config: HostSettings) -> list[Check]:
    from rave.facts import ValidationProbe

    probe = host.get_fact(ValidationProbe)
    control = None
    if config.ops_validate_from_control and probe.get("ok"):
        address = str(host.data.get("ssh_hostname") or host.name)
        control = ControlResults(address=address, ports=probe_ports(address))
        installed = {name for name, state in probe["units"].items() if state.get("present")}
        control.http = probe_application(address, edge_port(), read_hmac_secret(host), installed)
    checks = evaluate(host.name, config, probe, control)
    if config.ops_validate_force_failure:
        checks.append(
            Check(host.name, "connectivity", "forced failure", False, "ops_validate_force_failure")
        )
    return checks
