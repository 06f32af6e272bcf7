"""Major updates (`rave-ops update major COMPONENT --to VERSION`): what is automated, what is not.

Automated: a component whose version is a setting the deploy installs from (AUTOMATED: setting
name per component). rave-ops runs the usual procedure around it (backup, configuration
snapshot, validation, rollback) and adds what a version change replaces besides configuration:
the installed software tree, saved before the update and put back on rollback (the scripts
below, run by ops/major.py).

Not automated (RUNBOOKS, printed; the command changes nothing and exits 2): Debian's release
upgrade and PostgreSQL's major version. Neither can be exercised here: the staging mirror is
Debian 12 only (frozen), and Debian 12 ships a single PostgreSQL major (15).
"""

from __future__ import annotations

from dataclasses import dataclass

SAVE_DIR = "/var/lib/rave-ops/pre-major"

# component -> the setting (rave/settings/) the deploy installs that component's version from
AUTOMATED: dict[str, str] = {"ccr": "ccr_version"}


@dataclass(frozen=True)
class Software:
    """What a major update of one component replaces on the host."""

    component: str
    unit: str  # systemd unit, without .service
    port: int  # loopback port it serves on once started
    tree: str  # the installed software (absolute path), saved and restored as a whole
    version_file: str  # JSON file with a "version" key (an npm package.json)


def _version(software: Software) -> str:
    """A command group printing the installed version (or "absent")."""
    return (
        f"{{ python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[\"version\"])' "
        f"{software.version_file} 2>/dev/null || echo absent; }}"
    )


def save_script(software: Software, save_dir: str = SAVE_DIR) -> str:
    """Save the installed tree and its version (root-only); refuses when nothing is installed."""
    d = f"{save_dir}/{software.component}"
    tree = software.tree.lstrip("/")
    return "\n".join(
        [
            "set -eu",
            "umask 077",
            f'test -f {software.version_file} || {{ echo "{software.component} is not installed '
            f'here ({software.version_file} missing): nothing to update"; exit 1; }}',
            f"rm -rf {d} && mkdir -p {d}",
            f"tar -cpf {d}/tree.tar.new -C / {tree}",
            f"mv {d}/tree.tar.new {d}/tree.tar",
            f"{_version(software)} > {d}/version",
            f'echo "saved {software.tree} ({software.component} $(cat {d}/version), '
            f'$(du -sh {d}/tree.tar | cut -f1))"',
        ]
    )


def settle_script(software: Software, seconds: int) -> str:
    """Wait until the restarted unit is active and listening (or the time is up).

    Judging is the validation's job: this only keeps it from probing a service mid-start.
    """
    return "\n".join(
        [
            f"for i in $(seq {seconds}); do",
            f"  if systemctl is-active -q {software.unit} && "
            f"ss -Hltn 'sport = :{software.port}' | grep -q .; then",
            f'    echo "{software.unit} active and listening on {software.port} after ${{i}}s"',
            "    exit 0",
            "  fi",
            "  sleep 1",
            "done",
            f'echo "{software.unit} not up after {seconds}s: $(systemctl is-active {software.unit})'
            ' (the validation decides)"',
        ]
    )


def restore_script(software: Software, save_dir: str = SAVE_DIR) -> str:
    """Put the saved tree back (the update's files removed), restart, check the version; the
    saved copy is kept only when that fails."""
    d = f"{save_dir}/{software.component}"
    return "\n".join(
        [
            "set -eu",
            f'test -f {d}/tree.tar || {{ echo "no saved {software.component} in {d}"; exit 1; }}',
            f"systemctl stop {software.unit}",
            f"rm -rf {software.tree}",
            f"tar -xpf {d}/tree.tar -C /",
            f"systemctl reset-failed {software.unit} 2>/dev/null || true",
            f"systemctl start {software.unit}",
            f"now=$({_version(software)})",
            f"was=$(cat {d}/version)",
            f'echo "{software.component} version $now (before the update: $was)"',
            'test "$now" = "$was"',
            f"rm -rf {d}",  # put back: the copy is not needed any more
        ]
    )


def discard_script(software: Software, save_dir: str = SAVE_DIR) -> str:
    """After a validated update: the saved tree is no longer needed."""
    d = f"{save_dir}/{software.component}"
    return f'rm -rf {d} && echo "removed the saved {software.component} ({d})"'


DEBIAN_RUNBOOK = """\
rave-ops update major debian: NOT AUTOMATED, and this command changed nothing.
A Debian release upgrade (12 bookworm -> 13 trixie) cannot be tested by this project (its
staging hosts reach a frozen bookworm mirror only), so it is an operator runbook, not code:
  1. rave-ops update config --limit HOST     (host in sync and valid before you start)
  2. take a provider-level disk snapshot of HOST (the only full rollback of a release upgrade)
  3. run the backup (pyinfra -y INV ops/backup_now.py --limit HOST) and copy it off the host
  4. in the repository: the apt sources and every bookworm-specific pin (postgresql-15, the
     Node 18 compatibility of CCR, ...) changed for trixie; review the diff
  5. on HOST: apt-get update && apt-get full-upgrade, reboot, then deploy to HOST only and
     rave-ops validate --limit HOST; watch it for a day, then the next host
  6. rollback = restore the disk snapshot, then the data from the backup taken in 3
See docs/operations.md (Updates)."""

POSTGRESQL_RUNBOOK = """\
rave-ops update major postgresql: NOT AUTOMATED, and this command changed nothing.
Debian 12 ships one PostgreSQL major (15); a newer one comes with the next Debian release
(see `update major debian`) or from a repository this project does not configure, so the
upgrade cannot be tested here. With both versions installed on HOST, the runbook is:
  1. backup (ops/backup_now.py) and a disk snapshot, as for every major update
  2. pg_upgradecluster 15 main   (Debian's postgresql-common: new cluster, data copied)
  3. point the project's postgresql unit and paths at the new version, deploy to HOST,
     rave-ops validate --limit HOST
  4. rollback = pg_dropcluster NEW main, then start 15/main again (pg_upgradecluster leaves
     the old cluster, stopped, until you drop it)
See docs/operations.md (Updates)."""

RUNBOOKS: dict[str, str] = {"debian": DEBIAN_RUNBOOK, "postgresql": POSTGRESQL_RUNBOOK}


def pin_reminder(component: str, version: str, settings: tuple[str, ...] = ()) -> str:
    setting = AUTOMATED[component]
    names = [item.partition("=")[0] for item in settings]
    also = f" (and {', '.join(names)} as given with --set)" if names else ""
    return (
        f"next: set {setting} = {version!r} in group_data{also} and commit: until then a "
        f"deploy from this checkout moves the updated hosts back to its {setting} and settings "
        "(rave-ops drift shows it)"
    )
