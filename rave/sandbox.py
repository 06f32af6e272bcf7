"""systemd sandboxing as one reusable piece: each project-owned service gets its drop-in here."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from rave.components import Account
from rave.modes import ServiceLimits

# Syscall groups no network daemon of ours needs.
DEFAULT_SYSCALL_FILTER = (
    "@system-service",
    "~@privileged @resources @mount @debug @cpu-emulation @obsolete @raw-io",
    "~@reboot @swap @clock @module",
)


class Sandbox(BaseModel):
    """A unit's confinement; defaults are the strict profile, loosen per service with a reason."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    read_write_paths: tuple[str, ...] = ()
    address_families: tuple[str, ...] = ("AF_UNIX", "AF_INET", "AF_INET6")
    capabilities: tuple[str, ...] = ()  # empty: no capabilities at all
    syscall_filter: tuple[str, ...] = DEFAULT_SYSCALL_FILTER
    private_users: bool = False
    protect_home: str = "true"
    memory_deny_write_execute: bool = True
    private_devices: bool = True
    protect_proc: str = "invisible"
    extra: tuple[tuple[str, str], ...] = ()


def directives(sandbox: Sandbox, limits: ServiceLimits | None) -> list[tuple[str, str]]:
    """The [Service] directives, in a stable order (so the drop-in is byte-identical each run)."""
    lines: list[tuple[str, str]] = [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", sandbox.protect_home),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes" if sandbox.private_devices else "no"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("ProtectProc", sandbox.protect_proc),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes" if sandbox.memory_deny_write_execute else "no"),
        ("SystemCallArchitectures", "native"),
        ("UMask", "0027"),
        ("RestrictAddressFamilies", " ".join(sandbox.address_families)),
        ("CapabilityBoundingSet", " ".join(sandbox.capabilities)),
        ("AmbientCapabilities", " ".join(sandbox.capabilities)),
    ]
    if sandbox.private_users:
        lines.append(("PrivateUsers", "yes"))
    lines += [("SystemCallFilter", entry) for entry in sandbox.syscall_filter]
    if sandbox.read_write_paths:
        lines.append(("ReadWritePaths", " ".join(sandbox.read_write_paths)))
    lines += list(sandbox.extra)
    if limits is not None:
        lines += [
            ("MemoryMax", f"{limits.memory_max_mb}M"),
            ("CPUQuota", f"{limits.cpu_quota_percent}%"),
        ]
    return lines


def account_directives(account: Account) -> list[tuple[str, str]]:
    """Run as the component's own account instead of the package's shared one."""
    lines = [("User", account.name), ("Group", account.name)]
    if account.state_directory:
        lines += [
            ("StateDirectory", account.state_directory.removeprefix("/var/lib/")),
            ("StateDirectoryMode", "0750"),
        ]
    return lines


def dropin_text(
    sandbox: Sandbox, limits: ServiceLimits | None, reason: str, account: Account | None = None
) -> str:
    lines = (account_directives(account) if account else []) + directives(sandbox, limits)
    body = "\n".join(f"{key}={value}" for key, value in lines)
    return f"# Managed by RAVE deploy: {reason}\n[Service]\n{body}\n"


def limits_dropin_text(limits: ServiceLimits) -> str:
    """Resource limits only, for units whose packaging already confines them (nginx, postgresql)."""
    return (
        "# Managed by RAVE deploy: resource limits of the chosen mode\n[Service]\n"
        f"MemoryMax={limits.memory_max_mb}M\nCPUQuota={limits.cpu_quota_percent}%\n"
    )
