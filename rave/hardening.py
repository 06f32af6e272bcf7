"""Hardening: what the host must look like (rendered from settings) and what it looks like (facts).

Pure functions here are unit-tested; tasks/hardening.py turns them into pyinfra operations.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import shlex
from dataclasses import dataclass, field
from typing import Any

from pyinfra.api import FactBase

from rave.components import Exposure, component, monitoring_ports, public_ports
from rave.render import render
from rave.secrets.deploy import SECRETS_ROOT
from rave.settings import HostSettings

SSHD_CONFIG = "/etc/ssh/sshd_config"
SSHD_CANDIDATE = "/etc/ssh/sshd_config.rave-candidate"
SSHD_APPLY = "/usr/local/sbin/rave-sshd-apply"  # staged sshd/authorized_keys change, timed revert
NFT_CONFIG = "/etc/nftables.conf"
NFT_CANDIDATE = "/etc/nftables.rave-candidate.conf"
NFT_APPLY = "/usr/local/sbin/rave-nft-apply"
F2B_NFT6 = "/usr/local/sbin/rave-f2b-nft6"  # fail2ban: IPv6 bans as /64 (rave-nftables)
REPORT_PATH = "/var/lib/rave-hardening/report.json"
AUDIT_RULES = "/etc/audit/rules.d/rave.rules"
AUDIT_TMPFILES = "/etc/tmpfiles.d/rave-audit.conf"
SECRETS_DIR = SECRETS_ROOT  # watched by the audit rules (templates/hardening/audit.rules.j2)
# dropped by ssh_hardening/dev-sec and Mozilla's guideline: DH groups under 3072 bits
MODULI_MIN_BITS = 3071


def ssh_port() -> int:
    ports = [p.number for p in component("sshd").ports if p.exposure is Exposure.PUBLIC]
    return ports[0]


def web_ports() -> list[int]:
    return sorted(p.number for p in component("nginx").ports if p.exposure is Exposure.PUBLIC)


def keys_candidate(user: str) -> str:
    """Where the operator's next authorized_keys waits (root-only) until it is staged."""
    return f"/etc/ssh/authorized_keys.{user}.rave-candidate"


def operator_group(s: HostSettings) -> str:
    """The operators' login group: AllowGroups' first, which operator_user is made a member of."""
    return s.sshd_allow_groups[0]


def tunnel_ports(s: HostSettings) -> list[int]:
    """Loopback ports of the internal UIs this host runs (declared `operator_ui` in
    rave/components.py): the only ones an operator may forward to over SSH (PermitOpen)."""
    from rave.observability import enabled_components  # imports rave.ops: not at module load

    return sorted({p.number for c in enabled_components(s) for p in c.ports if p.operator_ui})


def authorized_keys_text(s: HostSettings) -> str:
    """operator_user's authorized_keys: exactly operator_keys (as pyinfra's operation wrote it)."""
    return "".join(f"{key.strip()}\n" for key in s.operator_keys)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- desired state -------------------------------------------------------------------------


def firewall_public_ports(s: HostSettings) -> list[int]:
    """Ports open to everyone apart from SSH (which gets its own, rate-limited rule)."""
    return sorted((set(public_ports()) | set(s.firewall_extra_tcp_ports)) - {ssh_port()})


def monitoring_sources(s: HostSettings) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """firewall_monitoring_sources plus the monitoring hosts of the inventory (rave/topology.py)
    that those do not already cover."""
    explicit = [ipaddress.ip_network(source) for source in s.firewall_monitoring_sources]
    derived = [
        ipaddress.ip_network(address)
        for address in s.monitoring_addresses
        if not any(ipaddress.ip_address(address) in network for network in explicit)
    ]
    return explicit + derived


def template_contexts(s: HostSettings) -> dict[str, dict[str, Any]]:
    """Every template of this concern with its context (also what the unit tests render)."""
    sources = monitoring_sources(s)
    enabled = "1" if s.unattended_upgrades_enabled else "0"
    return {
        "hardening/sshd_config.j2": {
            "s": s,
            "ssh_port": ssh_port(),
            "operator_group": operator_group(s),
            "tunnel_ports": tunnel_ports(s),
        },
        "hardening/nftables.conf.j2": {
            "s": s,
            "marker": "@MARKER@",
            "ssh_port": ssh_port(),
            "public_ports": firewall_public_ports(s),
            "monitoring_ports": monitoring_ports(),
            "monitoring_v4": [str(n) for n in sources if n.version == 4],
            "monitoring_v6": [str(n) for n in sources if n.version == 6],
        },
        "hardening/jail.local.j2": {
            "s": s,
            "ignore": ["127.0.0.1/8", "::1", *s.fail2ban_ignore_addresses],
            "ssh_port": ssh_port(),
            "web_ports": web_ports(),
        },
        "hardening/fail2ban.local.j2": {},
        "hardening/sysctl.conf.j2": {"sysctl": s.sysctl_desired},
        "hardening/modprobe.conf.j2": {"modules": s.kernel_disabled_modules},
        "hardening/journald.conf.j2": {"s": s},
        "hardening/unattended-upgrades.conf.j2": {"s": s},
        "hardening/auto-upgrades.conf.j2": {"enabled": enabled},
        "hardening/audit.rules.j2": {},
    }


def render_file(s: HostSettings, template: str) -> str:
    return render(template, **template_contexts(s)[template])


def sshd_config_text(s: HostSettings) -> str:
    return render_file(s, "hardening/sshd_config.j2")


def nftables_text(s: HostSettings) -> str:
    """The ruleset; its comment carries a hash of the ruleset so the live table can be compared."""
    body = render_file(s, "hardening/nftables.conf.j2")
    marker = f"rave-sha256:{sha256(body)[:32]}"
    return body.replace("@MARKER@", marker)


def nftables_marker(text: str) -> str:
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith('comment "rave-sha256:'):
            return stripped.split('"')[1]
    raise ValueError("ruleset has no rave marker")


# --- facts ---------------------------------------------------------------------------------


class ContainerVirt(FactBase[str]):
    """The container technology the host runs in ("none" on a VM or bare metal)."""

    def command(self) -> str:
        return "systemd-detect-virt --container 2>/dev/null || true"

    def process(self, output: list[str]) -> str:
        value = "\n".join(output).strip()
        return value or "none"


@dataclass(frozen=True)
class SysctlValue:
    value: str | None  # None: the key does not exist on this kernel
    writable: bool


class SysctlState(FactBase[dict[str, SysctlValue]]):
    """Current value of each key and whether it can be written here (read-only /proc/sys in
    containers, or a key this kernel does not have)."""

    def command(self, keys: tuple[str, ...]) -> str:
        words = " ".join(shlex.quote(key) for key in keys)
        return (
            f'for k in {words}; do p=/proc/sys/$(echo "$k" | tr . /); '
            'if [ -e "$p" ]; then v=$(tr "\\t\\n" "  " <"$p" | sed "s/ *$//"); '
            'if [ -w "$p" ]; then w=rw; else w=ro; fi; else v=; w=missing; fi; '
            'printf "%s|%s|%s\\n" "$k" "$w" "$v"; done'
        )

    def process(self, output: list[str]) -> dict[str, SysctlValue]:
        result: dict[str, SysctlValue] = {}
        for line in output:
            key, mode, value = line.split("|", 2)
            result[key] = SysctlValue(
                value=None if mode == "missing" else " ".join(value.split()),
                writable=mode == "rw",
            )
        return result


class NftRaveMarker(FactBase[str | None]):
    """The marker comment of the live `inet rave` table (None: no such table)."""

    def command(self) -> str:
        return (
            "nft list table inet rave 2>/dev/null "
            "| sed -n 's/^[[:space:]]*comment \"\\(.*\\)\"$/\\1/p' | head -n 1 || true"
        )

    def process(self, output: list[str]) -> str | None:
        value = "\n".join(output).strip()
        return value or None


class SshAccessState(FactBase[dict[str, str | None]]):
    """What decides who logs in: sha256 of sshd_config, and the operator's authorized_keys (its
    sha256, owner, group and mode, and its directory's) next to the user's primary group. One
    command; symlinks are reported as such (stat without -L), never followed."""

    def command(self, user: str) -> str:
        quoted = shlex.quote(user)
        return (
            f"home=$(getent passwd {quoted} | cut -d: -f6); "
            f"echo \"config=$(sha256sum {SSHD_CONFIG} 2>/dev/null | cut -d' ' -f1)\"; "
            f'echo "group=$(id -gn {quoted} 2>/dev/null)"; '
            'echo "dir=$(stat -c \'%U %G %a %F\' "$home/.ssh" 2>/dev/null)"; '
            'echo "keys=$(stat -c \'%U %G %a %F\' "$home/.ssh/authorized_keys" 2>/dev/null)"; '
            'if [ -f "$home/.ssh/authorized_keys" ] && [ ! -L "$home/.ssh/authorized_keys" ]; '
            'then echo "keys_sha=$(sha256sum "$home/.ssh/authorized_keys" | cut -d\' \' -f1)"; '
            "fi; true"
        )

    def process(self, output: list[str]) -> dict[str, str | None]:
        values: dict[str, str | None] = {
            "config": None,
            "group": None,
            "dir": None,
            "keys": None,
            "keys_sha": None,
        }
        for line in output:
            key, _, value = line.partition("=")
            if key in values:
                values[key] = value.strip() or None
        return values


def ssh_access_current(
    state: dict[str, str | None], s: HostSettings, config_text: str | None
) -> bool:
    """sshd_config (unless None: not managed by this run) and the operator's authorized_keys
    are already what the deploy wants."""
    user, group = s.operator_user, state["group"]
    return (
        (config_text is None or state["config"] == sha256(config_text))
        and state["dir"] == f"{user} {group} 700 directory"
        and state["keys"] == f"{user} {group} 600 regular file"
        and state["keys_sha"] == sha256(authorized_keys_text(s))
    )


class ShortModuli(FactBase[int]):
    """How many Diffie-Hellman groups in /etc/ssh/moduli are shorter than MODULI_MIN_BITS."""

    def command(self) -> str:
        return (
            f"awk '$1 !~ /^#/ && NF >= 7 && $5 < {MODULI_MIN_BITS} {{n++}} END {{print n+0}}' "
            "/etc/ssh/moduli 2>/dev/null || echo 0"
        )

    def process(self, output: list[str]) -> int:
        return int("".join(output).strip() or 0)


class MountOptions(FactBase[list[str] | None]):
    """Options of the filesystem mounted at a path (None: nothing mounted there)."""

    def command(self, path: str) -> str:
        return f"findmnt -n -o OPTIONS --target {shlex.quote(path)} 2>/dev/null || true"

    def process(self, output: list[str]) -> list[str] | None:
        value = "\n".join(output).strip()
        return value.split(",") if value else None


class AppArmorSupported(FactBase[bool]):
    """The kernel has AppArmor enabled and we are not inside a container."""

    def command(self) -> str:
        return (
            'if [ "$(systemd-detect-virt --container 2>/dev/null)" = "" ] || '
            '[ "$(systemd-detect-virt --container 2>/dev/null)" = none ]; then '
            "cat /sys/module/apparmor/parameters/enabled 2>/dev/null || echo N; else echo N; fi"
        )

    def process(self, output: list[str]) -> bool:
        return "".join(output).strip() == "Y"


class UnitActive(FactBase[dict[str, str]]):
    """`systemctl is-active` and `is-enabled` of a unit, tolerant of absent units."""

    def command(self, unit: str) -> str:
        quoted = shlex.quote(unit)
        return (
            f"printf '%s %s\\n' \"$(systemctl is-active {quoted} 2>/dev/null || true)\" "
            f'"$(systemctl is-enabled {quoted} 2>/dev/null || true)"'
        )

    def process(self, output: list[str]) -> dict[str, str]:
        words = " ".join(output).split()
        return {
            "active": words[0] if words else "unknown",
            "enabled": words[1] if len(words) > 1 else "unknown",
        }


# --- decisions -----------------------------------------------------------------------------


@dataclass
class SysctlPlan:
    apply: dict[str, str] = field(default_factory=dict)  # writable and different: set now
    unsettable: dict[str, dict[str, str | None]] = field(default_factory=dict)  # reported


def plan_sysctl(desired: dict[str, str], state: dict[str, SysctlValue]) -> SysctlPlan:
    plan = SysctlPlan()
    for key, want in sorted(desired.items()):
        have = state.get(key, SysctlValue(value=None, writable=False))
        if have.value is not None and " ".join(have.value.split()) == " ".join(want.split()):
            continue
        if have.value is not None and have.writable:
            plan.apply[key] = want
        else:
            reason = "no such key on this kernel" if have.value is None else "read-only here"
            plan.unsettable[key] = {"desired": want, "actual": have.value, "reason": reason}
    return plan


def report_text(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True) + "\n"
