"""Settings of the hardening concern: SSH, firewall, fail2ban, kernel, system baseline."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from rave.settings.base import Concern

# The deploy itself connects with paramiko (pyinfra): it needs one of these in each list, or the
# new sshd config would lock the deploy out. Checked below, before anything reaches a host.
PARAMIKO_KEX = ("curve25519-sha256", "curve25519-sha256@libssh.org")
PARAMIKO_CIPHERS = ("aes256-gcm@openssh.com", "aes128-gcm@openssh.com")
PARAMIKO_MACS = ("hmac-sha2-512-etm@openssh.com", "hmac-sha2-256-etm@openssh.com")

# An sshd algorithm name: syntax only. Whether sshd knows it is for `sshd -t` on the host to say.
_ALGORITHM = re.compile(r"^[A-Za-z0-9@._+-]+$")
_SYSCTL_KEY = re.compile(r"^[a-z0-9_]+(\.[a-zA-Z0-9_-]+)+$")

# dev-sec os_hardening's sysctl baseline (plus CIS Debian 12 L1), tightened where they are weak.
DEFAULT_SYSCTL: dict[str, str] = {
    # filesystem
    "fs.protected_hardlinks": "1",
    "fs.protected_symlinks": "1",
    "fs.protected_fifos": "2",
    "fs.protected_regular": "2",
    "fs.suid_dumpable": "0",
    # kernel
    "kernel.core_uses_pid": "1",
    "kernel.dmesg_restrict": "1",
    "kernel.kptr_restrict": "2",
    "kernel.perf_event_paranoid": "3",
    "kernel.randomize_va_space": "2",
    "kernel.sysrq": "0",
    "kernel.unprivileged_bpf_disabled": "1",
    "kernel.yama.ptrace_scope": "2",
    "net.core.bpf_jit_harden": "2",
    # IPv4
    "net.ipv4.ip_forward": "0",
    "net.ipv4.conf.all.accept_redirects": "0",
    "net.ipv4.conf.default.accept_redirects": "0",
    "net.ipv4.conf.all.secure_redirects": "0",
    "net.ipv4.conf.default.secure_redirects": "0",
    "net.ipv4.conf.all.send_redirects": "0",
    "net.ipv4.conf.default.send_redirects": "0",
    "net.ipv4.conf.all.accept_source_route": "0",
    "net.ipv4.conf.default.accept_source_route": "0",
    "net.ipv4.conf.all.log_martians": "1",
    "net.ipv4.conf.default.log_martians": "1",
    "net.ipv4.conf.all.rp_filter": "1",
    "net.ipv4.conf.default.rp_filter": "1",
    "net.ipv4.icmp_echo_ignore_broadcasts": "1",
    "net.ipv4.icmp_ignore_bogus_error_responses": "1",
    "net.ipv4.tcp_syncookies": "1",
    "net.ipv4.tcp_rfc1337": "1",
    # IPv6
    "net.ipv6.conf.all.forwarding": "0",
    "net.ipv6.conf.all.accept_redirects": "0",
    "net.ipv6.conf.default.accept_redirects": "0",
    "net.ipv6.conf.all.accept_source_route": "0",
    "net.ipv6.conf.default.accept_source_route": "0",
    "net.ipv6.conf.all.accept_ra": "0",
    "net.ipv6.conf.default.accept_ra": "0",
}


class HardeningSettings(Concern):
    # --- SSH -----------------------------------------------------------------------------------
    sshd_permit_root_login: Literal["no", "prohibit-password"] = Field(
        "no",
        description="'prohibit-password' only for a host that must be bootstrapped as root",
    )
    sshd_allow_groups: list[str] = Field(
        default_factory=lambda: ["rave-ssh"],
        min_length=1,
        description="sshd AllowGroups; the operator user is made a member of the first one",
    )
    sshd_kex_algorithms: list[str] = Field(
        default_factory=lambda: [
            "sntrup761x25519-sha512@openssh.com",
            "curve25519-sha256",
            "curve25519-sha256@libssh.org",
        ],
        min_length=1,
        description="sshd KexAlgorithms, strongest first (must keep a paramiko-capable one)",
    )
    sshd_ciphers: list[str] = Field(
        default_factory=lambda: [
            "chacha20-poly1305@openssh.com",
            "aes256-gcm@openssh.com",
            "aes128-gcm@openssh.com",
        ],
        min_length=1,
        description="sshd Ciphers (must keep an AES-GCM cipher: paramiko needs it)",
    )
    sshd_macs: list[str] = Field(
        default_factory=lambda: [
            "hmac-sha2-512-etm@openssh.com",
            "hmac-sha2-256-etm@openssh.com",
            "umac-128-etm@openssh.com",
        ],
        min_length=1,
        description="sshd MACs (encrypt-then-MAC only)",
    )
    sshd_revert_seconds: int = Field(
        60,
        ge=20,
        le=600,
        description="an sshd_config or authorized_keys change is rolled back after this many "
        "seconds unless the deploy logs in anew and confirms it",
    )
    sshd_max_auth_tries: int = Field(3, ge=1, le=10, description="sshd MaxAuthTries")
    sshd_login_grace_time: int = Field(30, ge=5, le=300, description="sshd LoginGraceTime, seconds")
    sshd_max_startups: str = Field(
        "10:30:60",
        pattern=r"^\d+(:\d+:\d+)?$",
        description="sshd MaxStartups (start:rate:full)",
    )
    sshd_max_sessions: int = Field(
        10, ge=1, le=64, description="sshd MaxSessions (pyinfra/testinfra multiplex sessions)"
    )
    sshd_client_alive_interval: int = Field(
        300, ge=0, description="sshd ClientAliveInterval, seconds (0: off)"
    )
    sshd_client_alive_count_max: int = Field(2, ge=0, description="sshd ClientAliveCountMax")
    sshd_log_level: Literal["INFO", "VERBOSE"] = Field(
        "VERBOSE", description="sshd LogLevel (VERBOSE logs key fingerprints for audit)"
    )
    sshd_remove_short_moduli: bool = Field(
        True, description="drop Diffie-Hellman moduli shorter than 3071 bits from /etc/ssh/moduli"
    )

    # --- firewall ------------------------------------------------------------------------------
    firewall_extra_tcp_ports: list[int] = Field(
        default_factory=list,
        description="TCP ports opened to everyone on this host beyond components.public_ports()",
    )
    firewall_monitoring_sources: list[str] = Field(
        default_factory=list,
        description="addresses/networks (v4 or v6) allowed to reach the MONITORING ports",
    )
    firewall_ssh_rate: int = Field(
        30,
        ge=5,
        le=1000,
        description="new SSH connections per minute allowed from one source address",
    )
    firewall_ssh_burst: int = Field(
        30, ge=5, le=1000, description="burst of new SSH connections allowed from one source"
    )
    firewall_allow_ping: bool = Field(True, description="answer ICMP/ICMPv6 echo (rate-limited)")
    firewall_log_drops: bool = Field(
        False, description="log dropped inbound packets (rate-limited) to the kernel log"
    )
    firewall_revert_seconds: int = Field(
        60,
        ge=20,
        le=600,
        description="a new ruleset is rolled back after this many seconds unless the deploy "
        "reconnects and confirms it",
    )

    # --- fail2ban ------------------------------------------------------------------------------
    fail2ban_ignore_addresses: list[str] = Field(
        default_factory=list,
        description="addresses/networks never banned (besides loopback), e.g. the operators' VPN",
    )
    fail2ban_bantime: str = Field(
        "1h", pattern=r"^\d+[smhdw]?$", description="fail2ban bantime (e.g. 10m, 1h)"
    )
    fail2ban_findtime: str = Field("10m", pattern=r"^\d+[smhdw]?$", description="fail2ban findtime")
    fail2ban_maxretry: int = Field(5, ge=1, le=100, description="fail2ban maxretry")
    fail2ban_nginx_log_dir: str = Field(
        "/var/log/nginx", pattern=r"^/[^\s]+$", description="where nginx writes its logs"
    )

    # --- kernel --------------------------------------------------------------------------------
    sysctl_settings: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_SYSCTL),
        description="sysctl keys and values enforced (default: the dev-sec/CIS set)",
    )
    sysctl_extra: dict[str, str] = Field(
        default_factory=dict, description="additional sysctl keys, per host (win over the set)"
    )
    kernel_disabled_modules: list[str] = Field(
        default_factory=lambda: [
            "cramfs",
            "freevxfs",
            "hfs",
            "hfsplus",
            "jffs2",
            "udf",
            "usb-storage",
            "dccp",
            "sctp",
            "rds",
            "tipc",
        ],
        description="kernel modules (unused filesystems and protocols) that may never load",
    )

    # --- system --------------------------------------------------------------------------------
    journald_system_max_use: str = Field(
        "500M", pattern=r"^\d+[KMG]$", description="journald SystemMaxUse"
    )
    journald_system_keep_free: str = Field(
        "1G", pattern=r"^\d+[KMG]$", description="journald SystemKeepFree"
    )
    journald_max_retention: str = Field(
        "1month",
        pattern=r"^\d+(s|min|h|day|week|month|year)$",
        description="journald MaxRetentionSec",
    )
    login_umask: str = Field("027", pattern=r"^0[0-7]{2}$", description="UMASK in login.defs")
    unattended_upgrades_enabled: bool = Field(
        True, description="install security updates automatically (Debian-Security origin only)"
    )
    unattended_upgrades_reboot: bool = Field(
        False, description="let unattended-upgrades reboot when an update needs it"
    )
    hardening_remove_packages: list[str] = Field(
        default_factory=lambda: [
            "telnet",
            "inetutils-telnet",
            "rsh-client",
            "rsh-redone-client",
            "nis",
            "talk",
            "xinetd",
            "avahi-daemon",
            "cups",
            "rpcbind",
            "tftp",
            "tnftp",
            "ftp",
        ],
        description="packages that must not be installed (clients of plaintext protocols, "
        "unneeded listeners)",
    )

    @field_validator("sshd_kex_algorithms", "sshd_ciphers", "sshd_macs", "sshd_allow_groups")
    @classmethod
    def _tokens(cls, values: list[str]) -> list[str]:
        for value in values:
            if not _ALGORITHM.match(value):
                raise ValueError(f"not a single sshd token: {value!r}")
        if len(set(values)) != len(values):
            raise ValueError("duplicate entries")
        return values

    @field_validator("firewall_extra_tcp_ports")
    @classmethod
    def _ports(cls, ports: list[int]) -> list[int]:
        for port in ports:
            if not 1 <= port <= 65535:
                raise ValueError(f"not a TCP port: {port}")
        return sorted(set(ports))

    @field_validator("firewall_monitoring_sources", "fail2ban_ignore_addresses")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        return [str(ipaddress.ip_network(value, strict=False)) for value in values]

    @field_validator("sysctl_settings", "sysctl_extra")
    @classmethod
    def _sysctl(cls, values: dict[str, str]) -> dict[str, str]:
        for key, value in values.items():
            if not _SYSCTL_KEY.match(key):
                raise ValueError(f"not a sysctl key: {key!r}")
            if not re.match(r"^[A-Za-z0-9 _.:-]+$", str(value)):
                raise ValueError(f"unexpected sysctl value for {key}: {value!r}")
        return {key: str(value) for key, value in values.items()}

    @model_validator(mode="after")
    def _paramiko_can_connect(self) -> HardeningSettings:
        """Refuse an SSH algorithm set the deploy itself could not connect with (lock-out)."""
        for field, needed in (
            ("sshd_kex_algorithms", PARAMIKO_KEX),
            ("sshd_ciphers", PARAMIKO_CIPHERS),
            ("sshd_macs", PARAMIKO_MACS),
        ):
            if not set(getattr(self, field)) & set(needed):
                raise ValueError(
                    f"{field} must keep one of {', '.join(needed)}: the deploy connects with "
                    "paramiko and would lock itself out"
                )
        return self

    @property
    def sysctl_desired(self) -> dict[str, str]:
        return {**self.sysctl_settings, **self.sysctl_extra}
