"""rave-ops: a thin CLI over the ops/*.py pyinfra runs (docs/operations.md).

    rave-ops status                      one table: every project service on every host
    rave-ops restart webhook nginx       start | stop | restart | logs [COMPONENT...]
    rave-ops validate                    six-stage validation, exit 1 on any FAIL
    rave-ops drift                       what a deploy would change, exit 1 on drift
    rave-ops facts                       the project's custom facts as JSON
    rave-ops update config|security|minor
    rave-ops update major ccr --to 2.0.0  a component's major version (debian, postgresql: runbook)
    rave-ops dead-letters list           webhook deliveries PostgreSQL refused: list | show ID |
                                         redrive ID|--all | discard ID|--all

Every command runs `python -m pyinfra` in the repository (config.py validates host data
before anything connects). -i picks the inventory (default: $RAVE_INVENTORY or staging).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rave.ops import deadletters
from rave.ops import drift as drift_mod
from rave.ops import major as major_mod
from rave.settings import HostSettings

REPO = Path(__file__).resolve().parents[2]
FACTS = (
    "rave.facts.DeployedRelease",
    "rave.facts.RaveMode",
    "rave.facts.ProjectServices",
    "rave.facts.SecretsRecipientStatus",
    "rave.facts.LastBackup",
    "rave.facts.CertificateExpiry",
)
BACKUP_FILE = "ops/backup_now.py"


def say(message: str) -> None:
    print(f"rave-ops: {message}", file=sys.stderr, flush=True)


@dataclass
class Runner:
    inventory: str
    limit: list[str]

    def command(self, *args: str, limit: list[str] | None = None, yes: bool = True) -> list[str]:
        cmd = [sys.executable, "-m", "pyinfra"]
        if yes:
            cmd.append("-y")
        for name in self.limit if limit is None else limit:
            cmd += ["--limit", name]
        return [*cmd, self.inventory, *args]

    def run(
        self,
        *args: str,
        limit: list[str] | None = None,
        capture: bool = False,
        yes: bool = True,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        cmd = self.command(*args, limit=limit, yes=yes)
        environment = {**os.environ, **env} if env else None
        return subprocess.run(
            cmd, cwd=REPO, text=True, capture_output=capture, check=False, env=environment
        )

    def hosts(self) -> list[str]:
        result = self.run("--json", "debug-inventory", capture=True)
        if result.returncode != 0:
            sys.stderr.write(result.stderr)
            raise SystemExit(2)
        return limited(json.loads(result.stdout), self.limit)


def limited(entries: list[dict[str, Any]], patterns: list[str]) -> list[str]:
    """Host names pyinfra's --limit would keep: a name, a glob or a group name."""
    names = []
    for entry in entries:
        groups = set(entry.get("groups", []))
        if not patterns or any(fnmatch.fnmatch(entry["name"], p) or p in groups for p in patterns):
            names.append(entry["name"])
    return names


def data_value(raw: str) -> object:
    """What pyinfra's --data makes of a value (pyinfra_cli.util.parse_cli_arg; importing
    pyinfra_cli would monkey-patch this process with gevent)."""
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _data(**values: object) -> list[str]:
    args: list[str] = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        args += ["--data", f"{key}={value}"]
    return args


def cmd_service(runner: Runner, opts: argparse.Namespace) -> int:
    data = _data(
        ops_action=opts.command,
        ops_services=",".join(opts.services) if opts.services else None,
        ops_journal_lines=getattr(opts, "lines", None),
    )
    return runner.run("ops/service.py", *data).returncode


def cmd_validate(runner: Runner, opts: argparse.Namespace) -> int:
    data = _data(
        ops_validate_from_control=not opts.host_only,
        ops_validate_force_failure=True if opts.force_failure else None,
    )
    return 0 if runner.run("ops/validate.py", *data).returncode == 0 else 1


def cmd_dead_letters(runner: Runner, opts: argparse.Namespace) -> int:
    """The receiver's dead-letter command on each selected host (ops/dead_letters.py)."""
    try:
        args = deadletters.request(opts.action, opts.id, opts.all)
    except ValueError as error:
        say(f"dead-letters: {error}")
        return 2
    result = runner.run("ops/dead_letters.py", env={deadletters.ENV: deadletters.encode(args)})
    return 0 if result.returncode == 0 else 1


def drift(runner: Runner) -> tuple[int, dict[str, drift_mod.HostDrift]]:
    # no -y: pyinfra detects changes only when it may have to ask (State(check_for_changes=not yes))
    result = runner.run("--dry", "--json", "deploy.py", capture=True, yes=False)
    try:
        plan = drift_mod.parse_plan_output(result.stdout)
    except ValueError:
        sys.stderr.write(result.stderr[-4000:])
        return 2, {}
    hosts = runner.hosts()
    found = drift_mod.drift_by_host(plan, hosts)
    return (1 if any(h.drifted for h in found.values()) else 0), found


def cmd_drift(runner: Runner, opts: argparse.Namespace) -> int:
    code, found = drift(runner)
    if code == 2:
        say("the dry run failed (its output is above)")
        return 2
    if opts.json:
        print(json.dumps({h: vars(d) for h, d in found.items()}, indent=2))
    else:
        print(drift_mod.summary(found))
    return code


def cmd_facts(runner: Runner, opts: argparse.Namespace) -> int:
    names = [f"rave.facts.{name}" for name in opts.facts] if opts.facts else list(FACTS)
    result = runner.run("--json", "fact", *names, capture=True)
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-4000:])
        return result.returncode
    print(result.stdout.strip())
    return 0


@dataclass(frozen=True)
class Major:
    """A component's major update: which component, to which version."""

    component: str
    version: str
    # further settings the new version needs (KEY=VALUE, pyinfra --data syntax): applied with
    # the version, rolled back with it (the configuration snapshot)
    settings: tuple[str, ...] = ()

    def data(self, action: str) -> list[str]:
        return _data(ops_major_component=self.component, ops_major_action=action)

    def deploy_data(self) -> list[str]:
        extra = [arg for item in self.settings for arg in ("--data", item)]
        return _data(**{major_mod.AUTOMATED[self.component]: self.version}) + extra


def update_host(
    runner: Runner, host: str, kind: str, force_failure: bool, major: Major | None = None
) -> tuple[bool, str]:
    """One host's update: backup, snapshot, update, validate, rollback on failure."""
    only = [host]
    if (REPO / BACKUP_FILE).exists():
        say(f"{host}: backup first ({BACKUP_FILE})")
        if runner.run(BACKUP_FILE, limit=only).returncode != 0:
            return False, "backup failed: nothing was changed"
    else:
        say(f"{host}: WARNING no {BACKUP_FILE} in this checkout: updating without a backup")
    say(f"{host}: snapshot of the managed configuration")
    if runner.run("ops/snapshot.py", *_data(ops_snapshot="take"), limit=only).returncode != 0:
        return False, "snapshot failed: nothing was changed"
    if major is not None:
        say(f"{host}: save the installed {major.component} (put back if the update fails)")
        if runner.run("ops/major.py", *major.data("save"), limit=only).returncode != 0:
            return False, f"saving {major.component} failed: nothing was changed"
    if kind == "config":
        say(f"{host}: config update")
        updated = runner.run("deploy.py", limit=only).returncode == 0
    elif major is not None:
        say(f"{host}: major update of {major.component} to {major.version}")
        updated = runner.run("deploy.py", *major.deploy_data(), limit=only).returncode == 0
        # wait for the restarted service even after a failed deploy: the rollback follows
        runner.run("ops/major.py", *major.data("settle"), limit=only)
    else:
        say(f"{host}: {kind} update")
        updated = (
            runner.run("ops/update.py", *_data(ops_update=kind), limit=only).returncode == 0
            and runner.run("deploy.py", limit=only).returncode == 0
        )
    if updated:
        say(f"{host}: validation after the update")
        data = _data(ops_validate_force_failure=True if force_failure else None)
        if runner.run("ops/validate.py", *data, limit=only).returncode == 0:
            if major is not None:
                runner.run("ops/major.py", *major.data("discard"), limit=only)
            return True, "updated and validated"
    reason = "validation failed" if updated else "the update failed"
    say(f"{host}: {reason}: rolling back the managed configuration")
    restored = (
        runner.run("ops/snapshot.py", *_data(ops_snapshot="restore"), limit=only).returncode == 0
    )
    if major is not None:
        say(f"{host}: rolling back {major.component} to the saved version")
        restored = (
            runner.run("ops/major.py", *major.data("restore"), limit=only).returncode == 0
            and restored
        )
        runner.run("ops/major.py", *major.data("settle"), limit=only)
    say(f"{host}: validation after the rollback")
    revalid = runner.run("ops/validate.py", limit=only).returncode == 0
    outcome = "rolled back" if restored else "rollback INCOMPLETE"
    return False, f"{reason}; {outcome}; host {'valid' if revalid else 'STILL INVALID'} after it"


def major_update(opts: argparse.Namespace) -> Major | int:
    """The validated target of `update major`, or the exit code when there is nothing to run."""
    known = sorted(major_mod.AUTOMATED) + sorted(major_mod.RUNBOOKS)
    if opts.component is None:
        say(f"update major needs a component: one of {known}")
        return 2
    if opts.component in major_mod.RUNBOOKS:
        print(major_mod.RUNBOOKS[opts.component])
        return 2
    if opts.component not in major_mod.AUTOMATED:
        say(f"update major: unknown component {opts.component!r}; one of {known}")
        return 2
    setting = major_mod.AUTOMATED[opts.component]
    if opts.to is None:
        say(f"update major {opts.component} needs --to VERSION (the new {setting})")
        return 2
    values: dict[str, object] = {setting: opts.to}
    for item in opts.set:
        key, sep, raw = item.partition("=")
        if not sep or key not in HostSettings.model_fields or key == setting:
            say(f"update major --set {item!r}: want SETTING=VALUE naming a setting (not {setting})")
            return 2
        values[key] = data_value(raw)
    try:
        HostSettings.model_validate(values)
    except ValidationError as error:
        # only the errors of these settings: the others (hostname, ...) come from the inventory
        wrong = [e for e in error.errors() if e["loc"] and e["loc"][0] in values]
        if wrong:
            message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in wrong)
            say(f"update major {opts.component}: setting {message}")
            return 2
    return Major(component=opts.component, version=opts.to, settings=tuple(opts.set))


def cmd_update(runner: Runner, opts: argparse.Namespace) -> int:
    major: Major | None = None
    if opts.kind == "major":
        target = major_update(opts)
        if isinstance(target, int):
            return target
        major = target
    elif opts.component is not None or opts.to is not None or opts.set:
        say(f"update {opts.kind} takes no component, --to or --set (only update major does)")
        return 2
    failures = 0
    results: list[tuple[str, bool, str]] = []
    hosts = runner.hosts()
    for position, host in enumerate(hosts):
        ok, detail = update_host(runner, host, opts.kind, opts.force_validation_failure, major)
        results.append((host, ok, detail))
        failures += 0 if ok else 1
        if failures > opts.max_failures:
            skipped = hosts[position + 1 :]
            if skipped:
                results += [(name, False, "not updated: rollout stopped") for name in skipped]
            break
    for host, ok, detail in results:
        print(f"{host}: {'OK  ' if ok else 'FAIL'} {detail}")
    if major is not None and any(ok for _, ok, _ in results):
        print(major_mod.pin_reminder(major.component, major.version, major.settings))
    return 0 if failures == 0 else 1


def parser() -> argparse.ArgumentParser:
    default_inventory = os.environ.get("RAVE_INVENTORY", "inventories/staging.py")
    top = argparse.ArgumentParser(prog="rave-ops", description=__doc__.split("\n\n")[0])
    top.add_argument("-i", "--inventory", default=default_inventory)
    top.add_argument("--limit", action="append", default=[], help="only this host (repeatable)")
    sub = top.add_subparsers(dest="command", required=True)
    for action in ("status", "start", "stop", "restart", "logs"):
        p = sub.add_parser(action, help=f"{action} project services")
        p.add_argument("services", nargs="*", help="component names (default: all present)")
        if action == "logs":
            p.add_argument("-n", "--lines", type=int, default=30)
        p.set_defaults(func=cmd_service)
    p = sub.add_parser("validate", help="six-stage validation")
    p.add_argument("--host-only", action="store_true", help="skip the control-machine probes")
    p.add_argument("--force-failure", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser(
        "dead-letters",
        help="webhook deliveries PostgreSQL refused: list, show, redrive or discard them",
        description="Exit 0 when the command worked on every host, 1 when it failed on one "
        "(a redrive PostgreSQL still refuses, or no such letter), 2 on a wrong command line.",
    )
    p.add_argument("action", choices=deadletters.ACTIONS)
    p.add_argument("id", nargs="?", help="a letter id (or a unique prefix), as `list` prints it")
    p.add_argument("--all", action="store_true", help="redrive or discard every letter")
    p.set_defaults(func=cmd_dead_letters)
    p = sub.add_parser("drift", help="what a deploy would change")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_drift)
    p = sub.add_parser("facts", help="the project's custom facts")
    p.add_argument("facts", nargs="*", help="fact class names (default: all)")
    p.set_defaults(func=cmd_facts)
    p = sub.add_parser("update", help="update procedure with backup, validation and rollback")
    p.add_argument("kind", choices=("config", "security", "minor", "major"))
    p.add_argument(
        "component",
        nargs="?",
        help="major only: ccr (automated), debian or postgresql (runbook, changes nothing)",
    )
    p.add_argument("--to", metavar="VERSION", help="major only: the component's new version")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SETTING=VALUE",
        help="major only: a setting the new version needs (applied and rolled back with it)",
    )
    p.add_argument(
        "--max-failures", type=int, default=0, help="failed hosts tolerated before stopping"
    )
    p.add_argument(
        "--force-validation-failure",
        action="store_true",
        help="testing: treat the post-update validation as failed (exercises the rollback)",
    )
    p.set_defaults(func=cmd_update)
    return top


def main(argv: list[str] | None = None) -> int:
    opts = parser().parse_args(argv)
    inventory = opts.inventory
    if not Path(inventory).is_absolute() and not (REPO / inventory).exists():
        inventory = str(Path(inventory).resolve())
    runner = Runner(inventory=inventory, limit=opts.limit)
    return int(opts.func(runner, opts))


if __name__ == "__main__":
    raise SystemExit(main())
