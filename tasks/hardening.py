"""Hardening: SSH, firewall, fail2ban, kernel, core dumps, updates, journald, audit, baseline.

Every step is idempotent (a second deploy changes nothing) and every change to the way into the
host is validated on the host before it is activated:
- sshd: the candidate config is checked with `sshd -t -f` and only then installed and reloaded;
- nftables: the candidate is checked with `nft -c`, loaded with a timed automatic revert, and
  confirmed only after the deploy has opened a NEW SSH connection through it.
What this host cannot do (a container's read-only kernel keys, auditd, AppArmor) is reported once
in the deploy output and in /var/lib/rave-hardening/report.json, never silently skipped.
"""

from __future__ import annotations

import shlex
import time
from typing import Any

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.facts.files import Sha256File
from pyinfra.operations import files, python, server, systemd
from pyinfra.operations.util import any_changed

from rave import hardening as h
from rave import runstate
from rave.deploykit import (
    ensure_directory,
    ensure_file,
    ensure_group,
    ensure_packages,
    ensure_service,
    ensure_user,
    install_host_script,
    put_file,
    put_text,
    remove_packages,
    settings,
)
from rave.render import FILES
from rave.runstate import is_kind
from rave.sandbox import Sandbox, dropin_text
from rave.settings import HostSettings


def templates(config: HostSettings) -> dict[str, dict[str, Any]]:
    """Every template this task renders, for the unit tests (name → context)."""
    return h.template_contexts(config)


def _file(name: str) -> str:
    return str(FILES / "hardening" / name)


def _put_file(name: str, src: str, dest: str, mode: str = "644") -> Any:
    return put_file(
        name,
        _file(src),
        dest,
        mode=mode,
    )


def _report(report: dict[str, Any], key: str, value: Any) -> None:
    report.setdefault("exceptions", {})[key] = value


# --- SSH -------------------------------------------------------------------------------------


@deploy("Hardening: SSH")
def ssh_hardening() -> None:
    config = settings()
    login_group = config.sshd_allow_groups[0]

    ensure_packages("Install the OpenSSH server", ["openssh-server"])
    ensure_group(name=f"SSH login group {login_group}", group=login_group, system=True)
    ensure_user(
        name=f"Operator {config.operator_user} may log in over SSH",
        user=config.operator_user,
        groups=[login_group],
        append=True,
    )
    # the staged access change's files (below) join the host keys' question: one command
    for path in (h.SSHD_APPLY, h.keys_candidate(config.operator_user), h.SSHD_CANDIDATE):
        runstate.plan("path", path)

    # Ed25519 host key only
    for kind in ("rsa", "ecdsa", "dsa"):
        for suffix in ("", ".pub"):
            ensure_file(
                name=f"No {kind} host key{suffix and ' (public)'}",
                path=f"/etc/ssh/ssh_host_{kind}_key{suffix}",
                present=False,
            )
    if not is_kind("/etc/ssh/ssh_host_ed25519_key", "file"):
        server.shell(
            name="Generate the Ed25519 host key",
            commands=["ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key"],
        )

    if config.sshd_remove_short_moduli and host.get_fact(h.ShortModuli) > 0:
        server.shell(
            name=f"Remove Diffie-Hellman moduli shorter than {h.MODULI_MIN_BITS} bits",
            commands=[
                f"awk '$1 ~ /^#/ || $5 >= {h.MODULI_MIN_BITS}' /etc/ssh/moduli "
                "> /etc/ssh/moduli.rave && chmod 644 /etc/ssh/moduli.rave "
                "&& mv /etc/ssh/moduli.rave /etc/ssh/moduli"
            ],
        )

    socket = host.get_fact(h.UnitActive, unit="ssh.socket")
    if socket["active"] == "active" or socket["enabled"] == "enabled":
        # socket activation ignores sshd_config's listeners: run the daemon as ssh.service
        # (still with the config it has; the staged change below then reloads it)
        server.shell(
            name="Serve SSH from ssh.service (disable socket activation)",
            commands=[
                "systemctl disable --now ssh.socket",
                "systemctl enable ssh.service",
                "systemctl restart ssh.service",
            ],
        )
    else:
        ensure_service(name="sshd runs", service="ssh.service", running=True, enabled=True)

    staged_ssh_access(config, h.sshd_config_text(config))


def staged_ssh_access(config: HostSettings, sshd_text: str | None) -> None:
    """sshd_config (None: left as it is) and the operator's authorized_keys, changed only when
    they differ, and then like the firewall: `sshd -t`, a host-side revert timer, install and
    reload, a NEW login as the deploy's own user with its own key, and only then confirm. A
    refused login reverts at once; a deploy that dies in between is reverted by the timer."""
    install_host_script("SSH access apply/revert helper", _file("rave-sshd-apply"), h.SSHD_APPLY)
    user = config.operator_user
    keys = h.keys_candidate(user)
    put_text(
        f"authorized_keys candidate of {user}", keys, h.authorized_keys_text(config), mode="600"
    )
    if sshd_text is not None:
        put_text("sshd config candidate", h.SSHD_CANDIDATE, sshd_text, mode="600")
    if h.ssh_access_current(host.get_fact(h.SshAccessState, user=user), config, sshd_text):
        return
    seconds = config.sshd_revert_seconds
    config_argument = "" if sshd_text is None else f" {h.SSHD_CANDIDATE}"
    server.shell(
        name=f"Check (sshd -t) and stage the SSH access change; it reverts in {seconds}s unless "
        "confirmed",
        commands=[f"{h.SSHD_APPLY} stage {seconds} {shlex.quote(user)} {keys}{config_argument}"],
    )
    python.call(
        name="Log in anew as the deploy's user with its key through the new SSH access",
        function=_login_or_revert,
    )
    server.shell(
        name="Confirm the SSH access change: cancel the revert",
        commands=[f"{h.SSHD_APPLY} confirm"],
    )


# --- firewall --------------------------------------------------------------------------------


def _reconnect(state: Any, host: Any) -> None:
    """Open a NEW SSH connection through the just-loaded ruleset (the old one is ESTABLISHED and
    would survive any ruleset); raise if it fails, so the revert timer is never cancelled."""
    connector = host.connector
    old = getattr(connector, "client", None)
    if old is None:  # not an SSH connector (@local, tests): nothing to prove
        return
    connector.connect()
    connector.disconnect()  # forget file-transfer channels of the old connection
    old.close()
    ok, output = host.run_shell_command(command="true")
    if not ok:
        raise RuntimeError(f"new SSH connection cannot run commands: {output.stderr}")


# a reloading sshd re-executes itself: its listener is away for a moment
LOGIN_ATTEMPTS = 3
LOGIN_RETRY_SECONDS = 2.0


def _login_or_revert(state: Any, host: Any) -> None:
    """A NEW login with the deploy's own user and key (the inventory's connection data) through
    the staged sshd_config and authorized_keys. Refused: revert at once over the old connection
    (still open: sshd keeps established sessions across a reload) and fail the host."""
    connector = host.connector
    old = getattr(connector, "client", None)
    if old is None:  # not an SSH connector (@local, tests): nothing to prove
        return
    error: Exception | None = None
    for attempt in range(LOGIN_ATTEMPTS):
        if attempt:
            time.sleep(LOGIN_RETRY_SECONDS)
        try:
            connector.connect()
        except Exception as failed:  # pyinfra raises ConnectError for every kind
            error = failed
            continue
        connector.disconnect()  # forget file-transfer channels of the old connection
        ok, output = host.run_shell_command(command="true")
        if ok:
            old.close()
            return
        connector.client.close()
        error = RuntimeError(f"the new login cannot run commands: {output.stderr}")
        break
    connector.client = old
    ok, output = host.run_shell_command(command=f"{h.SSHD_APPLY} abort", _sudo=True)
    reverted = "reverted at once" if ok else f"revert failed ({output.stderr}); the timer reverts"
    raise RuntimeError(
        f"{host.data.get('ssh_user')} could not log in anew after the SSH access change "
        f"({error}): {reverted}"
    )


@deploy("Hardening: firewall")
def firewall() -> None:
    config = settings()
    ensure_packages("Install nftables", ["nftables"])
    install_host_script("Firewall apply/revert helper", _file("rave-nft-apply"), h.NFT_APPLY)
    dropin = put_file(
        "nftables.service stop removes only the RAVE table",
        _file("nftables-stop.conf"),
        "/etc/systemd/system/nftables.service.d/rave.conf",
        mode="644",
    )
    systemd.daemon_reload(name="Reload systemd units", _if=dropin.did_change)

    text = h.nftables_text(config)
    put_text("Firewall ruleset candidate", h.NFT_CANDIDATE, text, mode="600")
    live = host.get_fact(h.NftRaveMarker)
    on_disk = host.get_fact(Sha256File, path=h.NFT_CONFIG)
    if live != h.nftables_marker(text) or on_disk != h.sha256(text):
        seconds = config.firewall_revert_seconds
        server.shell(
            name=f"Check (nft -c) and load the firewall; it reverts in {seconds}s unless confirmed",
            commands=[f"{h.NFT_APPLY} stage {h.NFT_CANDIDATE} {seconds}"],
        )
        python.call(
            name="Reconnect over a new SSH connection through the new firewall",
            function=_reconnect,
        )
        server.shell(
            name="Confirm the firewall: cancel the revert, install /etc/nftables.conf",
            commands=[f"{h.NFT_APPLY} confirm {h.NFT_CANDIDATE}"],
        )
    ensure_service(
        name="Load the firewall at boot", service="nftables.service", running=True, enabled=True
    )


# --- fail2ban --------------------------------------------------------------------------------


# root with only what bans and log reading need: nftables over netlink (CAP_NET_ADMIN), the
# nginx logs (www-data's, CAP_DAC_READ_SEARCH); its socket directory is a RuntimeDirectory
FAIL2BAN_SANDBOX = Sandbox(
    read_write_paths=("/var/lib/fail2ban",),
    address_families=("AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"),
    capabilities=("CAP_NET_ADMIN", "CAP_DAC_READ_SEARCH"),
    extra=(
        ("RuntimeDirectory", "fail2ban"),
        ("PrivateMounts", "yes"),
        ("SystemCallErrorNumber", "EPERM"),
    ),
)


@deploy("Hardening: fail2ban")
def fail2ban() -> None:
    config = settings()
    ensure_packages("Install fail2ban (systemd backend)", ["fail2ban", "python3-systemd"])

    # the nginx jails read nginx's files: make sure they exist before nginx does, or fail2ban
    # would refuse to start
    log_dir = config.fail2ban_nginx_log_dir
    if not is_kind(log_dir, "directory"):
        ensure_directory(
            name="nginx log directory (for fail2ban)",
            path=log_dir,
            user="root",
            group="adm",
            mode="755",
        )
    if not is_kind(f"{log_dir}/error.log", "file"):
        ensure_file(
            name="Empty nginx error log (for fail2ban)",
            path=f"{log_dir}/error.log",
            user="www-data",
            group="adm",
            mode="640",
        )

    helper = install_host_script("fail2ban IPv6 /64 ban helper", _file("rave-f2b-nft6"), h.F2B_NFT6)
    actions = [
        put_file(
            f"fail2ban action {name}",
            _file(f"{name}.conf"),
            f"/etc/fail2ban/action.d/{name}.conf",
        )
        for name in ("rave-nftables", "rave-nftables-allports")
    ]
    jail = put_text(
        "fail2ban jails",
        "/etc/fail2ban/jail.d/rave.local",
        h.render_file(config, "hardening/jail.local.j2"),
    )
    daemon = put_text(
        "fail2ban daemon settings",
        "/etc/fail2ban/fail2ban.d/rave.local",
        h.render_file(config, "hardening/fail2ban.local.j2"),
    )
    sandbox = put_text(
        "fail2ban sandbox",
        "/etc/systemd/system/fail2ban.service.d/sandbox.conf",
        dropin_text(FAIL2BAN_SANDBOX, None, "fail2ban sandbox (tasks/hardening.py)"),
    )
    systemd.daemon_reload(name="Reload systemd (fail2ban sandbox changed)", _if=sandbox.did_change)
    ensure_service(name="fail2ban runs", service="fail2ban.service", running=True, enabled=True)
    ensure_service(
        name="Restart fail2ban (its settings or sandbox changed)",
        service="fail2ban.service",
        restarted=True,
        _if=any_changed(helper, *actions, jail, daemon, sandbox),
    )


# --- kernel ----------------------------------------------------------------------------------


@deploy("Hardening: kernel")
def kernel(report: dict[str, Any]) -> None:
    config = settings()
    desired = config.sysctl_desired
    put_text(
        "Kernel settings (dev-sec/CIS)",
        "/etc/sysctl.d/90-rave-hardening.conf",
        h.render_file(config, "hardening/sysctl.conf.j2"),
    )
    state = host.get_fact(h.SysctlState, keys=tuple(sorted(desired)))
    plan = h.plan_sysctl(desired, state)
    if plan.apply:
        assignments = " ".join(shlex.quote(f"{key}={value}") for key, value in plan.apply.items())
        server.shell(
            name=f"Apply {len(plan.apply)} kernel setting(s) now",
            commands=[f"sysctl -q -w {assignments}"],
        )
    if plan.unsettable:
        _report(report, "sysctl", plan.unsettable)

    put_text(
        "Unused filesystems and protocols never load",
        "/etc/modprobe.d/rave-hardening.conf",
        h.render_file(config, "hardening/modprobe.conf.j2"),
    )
    _put_file("No core dumps (limits)", "limits.conf", "/etc/security/limits.d/rave-nocore.conf")
    _put_file(
        "No core dumps (systemd-coredump)",
        "coredump.conf",
        "/etc/systemd/coredump.conf.d/rave.conf",
    )
    nocore = _put_file(
        "No core dumps (services)",
        "system-nocore.conf",
        "/etc/systemd/system.conf.d/rave-nocore.conf",
    )
    server.shell(
        name="Re-execute systemd (default limits changed)",
        commands=["systemctl daemon-reexec"],
        _if=nocore.did_change,
    )


# --- system ----------------------------------------------------------------------------------

IDENTITY_FILES = {
    "/etc/passwd": ("root", "root", "644"),
    "/etc/passwd-": ("root", "root", "644"),
    "/etc/group": ("root", "root", "644"),
    "/etc/group-": ("root", "root", "644"),
    "/etc/shadow": ("root", "shadow", "640"),
    "/etc/shadow-": ("root", "shadow", "640"),
    "/etc/gshadow": ("root", "shadow", "640"),
    "/etc/gshadow-": ("root", "shadow", "640"),
}
SHM_OPTIONS = ("nodev", "nosuid", "noexec")


NEEDRESTART_CONF = "/etc/needrestart/conf.d/rave.conf"
NEEDRESTART_TEXT = (
    "# Managed by RAVE deploy (tasks/hardening.py): restart outdated services automatically,\n"
    "# never ask (unattended-upgrades runs it through its apt hook)\n"
    "$nrconf{restart} = 'a';\n"
)


@deploy("Hardening: system")
def system(report: dict[str, Any], container: bool) -> None:
    config = settings()

    remove_packages(
        "Remove unneeded packages (plaintext clients, needless listeners)",
        config.hardening_remove_packages,
    )

    # security updates
    if config.unattended_upgrades_enabled:
        ensure_packages("Install unattended-upgrades", ["unattended-upgrades"])
        put_text(
            "unattended-upgrades: Debian-Security origin only",
            "/etc/apt/apt.conf.d/52rave-unattended-upgrades",
            h.render_file(config, "hardening/unattended-upgrades.conf.j2"),
        )
        # after an upgrade (unattended-upgrades included: needrestart's apt hook), daemons still
        # using replaced libraries are restarted without asking
        ensure_packages("Install needrestart", ["needrestart"])
        put_text(
            "needrestart: restart outdated services automatically",
            NEEDRESTART_CONF,
            NEEDRESTART_TEXT,
        )
    put_text(
        "Periodic apt runs",
        "/etc/apt/apt.conf.d/20auto-upgrades",
        h.render_file(config, "hardening/auto-upgrades.conf.j2"),
    )

    # journald: persistent, capped
    journald = put_text(
        "journald: persistent, size-capped",
        "/etc/systemd/journald.conf.d/rave.conf",
        h.render_file(config, "hardening/journald.conf.j2"),
    )
    ensure_service(
        name="Restart journald (its settings changed)",
        service="systemd-journald.service",
        restarted=True,
        _if=journald.did_change,
    )

    # identity files and umask; planned first so that the checks below are one command
    for path in IDENTITY_FILES:
        runstate.plan("path", path)
    for path, (user, group, mode) in IDENTITY_FILES.items():
        if path.endswith("-") and not is_kind(path, "file"):
            continue
        ensure_file(name=f"Permissions of {path}", path=path, user=user, group=group, mode=mode)
    files.line(
        name=f"Default umask {config.login_umask}",
        path="/etc/login.defs",
        line=r"^UMASK\s",
        replace=f"UMASK\t\t{config.login_umask}",
    )

    # /dev/shm
    files.line(
        name="/dev/shm mounted nodev,nosuid,noexec (fstab)",
        path="/etc/fstab",
        line=r"^\S+\s+/dev/shm\s",
        replace="tmpfs /dev/shm tmpfs defaults,nodev,nosuid,noexec 0 0",
    )
    options = host.get_fact(h.MountOptions, path="/dev/shm") or []
    missing = [option for option in SHM_OPTIONS if option not in options]
    if missing:
        remount = f"mount -o remount,{','.join(SHM_OPTIONS)} /dev/shm"
        name = f"Remount /dev/shm nodev,nosuid,noexec (lacks {','.join(missing)})"
        if container:
            # the container manager may forbid it: the fstab line is there, say so, don't fail
            remount += " || echo 'remount of /dev/shm refused in this container' >&2"
            name += " (may be refused in a container)"
        server.shell(name=name, commands=[remount])

    # AppArmor where the kernel offers it
    if host.get_fact(h.AppArmorSupported):
        ensure_packages("Install AppArmor", ["apparmor"])
        ensure_service(name="AppArmor runs", service="apparmor.service", running=True, enabled=True)
    else:
        _report(report, "apparmor", "not available (container, or kernel without AppArmor)")

    # audit: rules everywhere; the daemon only where the kernel lets it run
    skip = _put_file(
        "auditd is skipped (not failed) inside containers",
        "auditd-container.conf",
        "/etc/systemd/system/auditd.service.d/rave-container.conf",
    )
    systemd.daemon_reload(name="Reload systemd units (auditd)", _if=skip.did_change)
    ensure_packages("Install auditd", ["auditd"])
    rules = put_text(
        "Audit rules (identity, sudoers, sshd, firewall, secrets)",
        h.AUDIT_RULES,
        h.render_file(config, "hardening/audit.rules.j2"),
        mode="640",
    )
    # auditctl refuses a watch whose parent directory is missing, and stops loading the file
    # there: the secrets directory exists from early boot (tmpfiles runs before auditd)
    watched = put_text(
        "Watched secrets directory exists from early boot (tmpfiles)",
        h.AUDIT_TMPFILES,
        f"d {h.SECRETS_DIR} 0711 root root -\n",
    )
    if not is_kind(h.SECRETS_DIR, "directory"):
        server.shell(
            name=f"Create {h.SECRETS_DIR} now (tmpfiles)",
            commands=[f"systemd-tmpfiles --create {h.AUDIT_TMPFILES}"],
        )
    if container:
        _report(report, "auditd", "cannot run in a container (no audit in a child PID namespace)")
        if host.get_fact(h.UnitActive, unit="auditd.service")["active"] == "failed":
            server.shell(
                name="Clear auditd's failed start (it cannot run in a container)",
                commands=["systemctl reset-failed auditd.service"],
            )
    else:
        ensure_service(name="auditd runs", service="auditd.service", running=True, enabled=True)
        server.shell(
            name="Load the audit rules",
            commands=["augenrules --load"],
            _if=any_changed(rules, watched),
        )


@deploy("Hardening")
def hardening() -> None:
    virtualization = host.get_fact(h.ContainerVirt)
    container = virtualization != "none"
    report: dict[str, Any] = {"virtualization": virtualization}

    ssh_hardening()
    firewall()
    fail2ban()
    # by keyword: pyinfra's PyinfraOperation type puts its own arguments first
    kernel(report=report)
    system(report=report, container=container)

    exceptions = report.get("exceptions", {})
    if exceptions:
        lines = [f"{host.name}: hardening controls this host cannot apply ({virtualization}):"]
        for key, value in sorted(exceptions.items()):
            if key == "sysctl":
                for name, item in value.items():
                    lines.append(
                        f"  sysctl {name}: want {item['desired']}, is {item['actual']} "
                        f"({item['reason']})"
                    )
            else:
                lines.append(f"  {key}: {value}")
        logger.warning("\n".join(lines))
    put_text("Hardening report", h.REPORT_PATH, h.report_text(report), mode="644")
