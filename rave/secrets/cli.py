"""rave-secrets: the operators' tool for the encrypted secrets of each environment.

Plaintext never touches the control machine's disk: values are decrypted in memory, and
`edit` uses a private directory on tmpfs (XDG_RUNTIME_DIR or /dev/shm, mode 0700).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from rave.components import secret_readers
from rave.deployrun import REPO, DeployResult, run_deploy
from rave.secrets import crypto, generate, operators
from rave.secrets.model import (
    SECRET_NAMES,
    SecretsFormatError,
    SecretsModel,
    file_content,
    parse,
)
from rave.secrets.store import (
    STAGING_ENVIRONMENT,
    Environment,
    Kind,
    Recipient,
    StoreError,
    default_identity,
)

MEMORY_FILESYSTEMS = ("tmpfs", "ramfs")

# how `rotate` makes a new value; the others are external (edit them). Each one really changes
# on the host with the deploy: the readers restart or reload with it, the database task sets the
# roles' passwords, the backup task moves the restic repository's key (previous -> new).
ROTATABLE = (
    "webhook_hmac_secrets",
    "postgres_webhook_password",
    "postgres_exporter_password",
    "backup_repository_password",
    "ccr_ui_password_hash",
    "tls_certificate",
    "tls_private_key",
)

# generated values the host would ignore: `rotate` refuses them and says how to change them
NOT_ROTATABLE = {
    "backup_pgbackrest_cipher_password": (
        "pgBackRest cannot re-encrypt a repository: its cipher pass stays for the repository's "
        "life. To change it, start a new repository (a new repo1-path) with a new value set by "
        "`rave-secrets set backup_pgbackrest_cipher_password --env {env}`, then deploy"
    ),
    "grafana_admin_password": (
        "Grafana reads grafana_admin_password only when it first creates its database, so a new "
        "value would not change the admin password (the old one would keep working). Change it "
        "on each host, then record the same value in the secrets:\n"
        "    sudo grafana-cli admin reset-admin-password --password-from-stdin   "
        "(type the new password, then Ctrl-D)\n"
        "    rave-secrets set grafana_admin_password --env {env}   (the same password on stdin)\n"
        "then deploy"
    ),
}
# `rotate NAME --retire-old`: the secrets that keep their previous value during a rotation
RETIRABLE = ("webhook_hmac_secrets", "backup_repository_password")
BACKUP_PASSWORD = "backup_repository_password"
BACKUP_PREVIOUS = "backup_repository_previous_password"

# the run `operator-keys rotate` deploys: only the operator's authorized_keys
OPERATOR_KEYS_DEPLOY = "ops/operator_keys.py"
DNS_NAME = re.compile(
    r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
    re.IGNORECASE,
)


class CliError(Exception):
    pass


# -- helpers ------------------------------------------------------------------------------------
def _env(args: argparse.Namespace) -> Environment:
    return Environment.named(args.env, Path(args.dir) if args.dir else None)


def _identities(args: argparse.Namespace) -> list[Any]:
    path = Path(args.identity) if args.identity else default_identity(args.env)
    if not path.exists():
        raise CliError(
            f"no identity {path}: pass --identity FILE or set RAVE_AGE_IDENTITY"
            " (an age key file or your OpenSSH ed25519 private key)"
        )
    return crypto.load_identities(path)


def _deploy_command(env: str) -> str:
    return f".venv/bin/pyinfra -y inventories/{env}.py deploy.py"


def _inventory(args: argparse.Namespace) -> Path:
    """The environment's inventory (checked before anything changes)."""
    path = Path(args.inventory) if args.inventory else Path(f"inventories/{args.env}.py")
    if not (REPO / path).is_file():
        raise CliError(f"no inventory {path}: pass --inventory FILE")
    return path


def _deploy(inventory: Path, deploys: tuple[str, ...], *extra: str) -> DeployResult:
    """Run pyinfra (its output is kept, not shown: the summary and changed operations are)."""
    shown = " ".join(["pyinfra -y", *extra, str(inventory), *deploys])
    print(f"deploying: {shown}", flush=True)
    result = run_deploy(inventory, deploys, extra_args=extra)
    print(f"  {result.summary()}")
    for operation in result.changed_operations():
        print(f"  changed: {operation}")
    if not result.ok:
        sys.stderr.write(result.log_tail(40) + "\n")
    return result


def _tls_names(names: list[str] | None) -> list[str] | None:
    """--tls-name values: host names or IP addresses, refused before anything changes."""
    for name in names or []:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            if not DNS_NAME.match(name) or len(name) > 253:
                raise CliError(
                    f"--tls-name {name!r} is neither a DNS name nor an IP address"
                ) from None
    return names


def _readers_of(names: list[str]) -> list[str]:
    units = []
    for name in names:
        for component in secret_readers(name):
            unit = f"{component.unit}.service"
            if unit not in units:
                units.append(unit)
    return units


def filesystem_type(path: Path) -> str | None:
    best, fstype = "", None
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            point = fields[1].replace("\\040", " ")
            text = str(path)
            if (text == point or text.startswith(point.rstrip("/") + "/")) and len(point) >= len(
                best
            ):
                best, fstype = point, fields[2]
    return fstype


def private_tmpfs_dir() -> Path:
    """A fresh 0700 directory on a memory filesystem (refuses disk-backed locations)."""
    candidates = [os.environ.get("XDG_RUNTIME_DIR"), "/dev/shm", f"/run/user/{os.getuid()}"]
    for candidate in candidates:
        if not candidate or not Path(candidate).is_dir():
            continue
        if filesystem_type(Path(candidate).resolve()) not in MEMORY_FILESYSTEMS:
            continue
        try:
            return Path(tempfile.mkdtemp(prefix="rave-secrets-", dir=candidate))
        except OSError:
            continue
    raise CliError("no writable tmpfs (XDG_RUNTIME_DIR, /dev/shm): refusing to decrypt to disk")


class _Dumper(yaml.SafeDumper):
    pass


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def to_yaml(model: SecretsModel) -> str:
    header = (
        "# rave-secrets: edit the values, save and quit. The file is validated against\n"
        "# rave/secrets/model.py and re-encrypted; this temporary copy (tmpfs) is then deleted.\n"
    )
    body = yaml.dump(model.model_dump(mode="json"), Dumper=_Dumper, sort_keys=True, width=1000)
    return header + body


def _print_rotation(env: str, changed: list[str]) -> None:
    units = _readers_of(changed)
    print(f"changed: {', '.join(changed)}")
    readers = ", ".join(units) or "none"
    print(f"deploy to put it in place (restarts only its readers: {readers}):")
    print(f"    {_deploy_command(env)}")


# -- commands -----------------------------------------------------------------------------------
def cmd_init(args: argparse.Namespace) -> int:
    env = _env(args)
    if env.exists():
        raise CliError(f"{env.encrypted_path} exists already: use edit")
    identity_path = Path(args.identity) if args.identity else default_identity(args.env)
    if not identity_path.exists():
        secret, public = crypto.generate_identity()
        identity_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(identity_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(
                crypto.identity_text(secret, public, f"RAVE age identity of {args.member}")
            )
        print(f"created your age identity {identity_path} (keep it safe; public key {public})")
    keys = crypto.public_keys_of(identity_path)
    if not keys:
        raise CliError(f"{identity_path}: init needs an age identity (AGE-SECRET-KEY-1...)")
    env.save_recipients([Recipient("team", args.member, keys[0])])
    from rave.secrets.staging import generated_values

    model = generated_values(args.tls_name or [f"{args.env}.invalid"])
    env.write(model, None)
    print(f"created {env.encrypted_path} with generated values (self-signed TLS for ")
    print(f"  {', '.join(args.tls_name or [args.env + '.invalid'])}); set real ones with:")
    print(f"    rave-secrets edit --env {args.env}")
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    env = _env(args)
    identities = _identities(args)
    current = env.decrypt(identities)
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    workdir = private_tmpfs_dir()
    path = workdir / f"{env.name}.yaml"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(to_yaml(current))
        while True:
            if subprocess.run([*shlex.split(editor), str(path)], check=False).returncode != 0:
                raise CliError("the editor failed: nothing changed")
            try:
                data = yaml.safe_load(path.read_text())
                model = parse(data, "your edit")
                break
            except (yaml.YAMLError, SecretsFormatError) as error:
                sys.stderr.write(f"{error}\n")
                if not sys.stdin.isatty() or input("edit again? [Y/n] ").strip().lower() == "n":
                    raise CliError("invalid: nothing changed") from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if model == current:
        print("no change")
        return 0
    changed = env.write(model, current)
    _print_rotation(env.name, changed)
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    if args.name not in SECRET_NAMES:
        raise CliError(f"unknown secret {args.name}; known: {', '.join(SECRET_NAMES)}")
    model = _env(args).decrypt(_identities(args))
    if getattr(model, args.name) is None:
        raise CliError(f"{args.name} is not set")
    sys.stdout.write(file_content(model, args.name))
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    if args.name not in SECRET_NAMES:
        raise CliError(f"unknown secret {args.name}; known: {', '.join(SECRET_NAMES)}")
    env = _env(args)
    current = env.decrypt(_identities(args))
    raw = sys.stdin.read()
    value: Any = raw
    if not isinstance(getattr(current, args.name), str):
        try:
            value = json.loads(raw)
        except ValueError:
            raise CliError(f"{args.name} takes JSON on stdin") from None
    elif "\n" not in raw.rstrip("\n"):
        value = raw.rstrip("\n")
    data = current.model_dump(mode="json") | {args.name: value}
    model = parse(data, "the new value")
    if model == current:
        print("no change")
        return 0
    _print_rotation(env.name, env.write(model, current))
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    if args.name in NOT_ROTATABLE:
        raise CliError(
            f"{args.name} cannot be rotated by rave-secrets: "
            + NOT_ROTATABLE[args.name].format(env=args.env)
        )
    if args.name not in ROTATABLE:
        raise CliError(
            f"{args.name} cannot be generated (an external credential): "
            f"use `rave-secrets edit --env {args.env}` or `set`"
        )
    env = _env(args)
    tls_names = _tls_names(args.tls_name)
    inventory = _inventory(args) if args.deploy else None
    current = env.decrypt(_identities(args))
    data = current.model_dump(mode="json")
    if args.name == "webhook_hmac_secrets":
        keep = [] if args.no_overlap else data["webhook_hmac_secrets"][:1]
        data["webhook_hmac_secrets"] = [generate.hmac_secret(), *keep]
    elif args.name == "ccr_ui_password_hash":
        data["ccr_ui_password"] = generate.password()
        data["ccr_ui_password_hash"] = generate.htpasswd_line(data["ccr_ui_password"])
    elif args.name == BACKUP_PASSWORD:
        if data[BACKUP_PREVIOUS]:
            raise CliError(
                f"a rotation of {BACKUP_PASSWORD} is pending ({BACKUP_PREVIOUS} is set): deploy "
                f"it first (the deploy moves the repository's key to the new password), then run "
                f"`rave-secrets rotate {BACKUP_PASSWORD} --env {args.env} --retire-old` and "
                "rotate again; nothing changed"
            )
        data[BACKUP_PREVIOUS] = data[BACKUP_PASSWORD]
        data[BACKUP_PASSWORD] = generate.password()
    elif args.name in ("tls_certificate", "tls_private_key"):
        names = tls_names or generate.certificate_names(current.tls_certificate)
        data["tls_certificate"], data["tls_private_key"] = generate.self_signed(names)
        print("note: a new self-signed certificate; for a CA-signed one use `set` or `edit`")
    else:
        data[args.name] = generate.password()
    changed = env.write(parse(data, "the rotated values"), current)
    if args.name == "webhook_hmac_secrets" and not args.no_overlap:
        print("the previous HMAC secret stays accepted; once senders use the new one, run:")
        print(f"    rave-secrets rotate webhook_hmac_secrets --env {args.env} --retire-old")
    if args.name == "ccr_ui_password_hash":
        print(f"the new password: rave-secrets get ccr_ui_password --env {args.env}")
    if args.name == BACKUP_PASSWORD:
        print(
            f"the previous password stays in {BACKUP_PREVIOUS}: the deploy adds a restic key for "
            "the new password with it, proves the new one opens the repository and removes the "
            "old key. Once that deploy succeeded, run:"
        )
        print(f"    rave-secrets rotate {BACKUP_PASSWORD} --env {args.env} --retire-old")
    if inventory is None:
        _print_rotation(env.name, changed)
        return 0
    print(f"changed: {', '.join(changed)}; restarts or reloads: {', '.join(_readers_of(changed))}")
    if not _deploy(inventory, ("deploy.py",)).ok:
        raise CliError(f"the deploy failed: the new value is in {env.encrypted_path}; deploy again")
    return 0


def cmd_retire(args: argparse.Namespace) -> int:
    if args.name not in RETIRABLE:
        raise CliError(f"--retire-old is for {' and '.join(RETIRABLE)}, not {args.name}")
    env = _env(args)
    current = env.decrypt(_identities(args))
    if args.name == BACKUP_PASSWORD:
        if not current.backup_repository_previous_password:
            print(f"no previous {BACKUP_PASSWORD} is kept: nothing to retire")
            return 0
        data = current.model_dump(mode="json") | {BACKUP_PREVIOUS: ""}
        print(
            "dropping the previous backup password: do this only after the deploy that followed "
            "`rotate` succeeded (it moved the repository to the new password)"
        )
        _print_rotation(env.name, env.write(parse(data, "the values"), current))
        return 0
    if len(current.webhook_hmac_secrets) < 2:
        print("only one webhook HMAC secret is active: nothing to retire")
        return 0
    data = current.model_dump(mode="json")
    data["webhook_hmac_secrets"] = data["webhook_hmac_secrets"][:1]
    _print_rotation(env.name, env.write(parse(data, "the values"), current))
    return 0


def cmd_recipients(args: argparse.Namespace) -> int:
    env = _env(args)
    identities = _identities(args)
    recipients = env.recipients()
    kind: Kind = "host" if args.host else "team"
    name = args.host or args.member
    if args.action == "add":
        if not args.key:
            raise CliError("--key is required (age1... for a member, ssh-ed25519 ... for a host)")
        key = crypto.normalize_key(args.key)
        if (kind == "host") != key.startswith("ssh-ed25519 "):
            raise CliError("a host takes its ssh-ed25519 host key; a member an age1 key")
        recipients = [r for r in recipients if not (r.kind == kind and r.name == name)]
        recipients.append(Recipient(kind, name, key))
    else:
        remaining = [r for r in recipients if not (r.kind == kind and r.name == name)]
        if len(remaining) == len(recipients):
            raise CliError(f"no {kind} {name} among the recipients")
        if not any(r.kind == "team" for r in remaining):
            raise CliError("refusing to remove the last team member")
        recipients = remaining
    current = env.decrypt(identities)  # check we can still read it before changing anything
    env.save_recipients(recipients)
    env.write(current, current)
    print(f"{args.action} {kind} {name}: {env.encrypted_path} re-encrypted to")
    print("  " + ", ".join(f"{r.kind} {r.name}" for r in recipients))
    if args.action == "remove":
        print("a removed recipient may have kept old copies: rotate the values it could read")
    print(f"commit {env.encrypted_path.name} and {env.recipients_path.name}, then deploy:")
    print(f"    {_deploy_command(env.name)}")
    return 0


def cmd_reencrypt(args: argparse.Namespace) -> int:
    env = _env(args)
    env.reencrypt(_identities(args))
    print(f"{env.encrypted_path} re-encrypted to {len(env.recipients())} recipient(s)")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    env = _env(args)
    recipients = env.recipients()
    versions = env.versions()
    print(f"environment {env.name}: {env.encrypted_path}")
    print("can decrypt everything:")
    for r in recipients:
        tag = ""
        if r.kind == "host" and env.exists() and not env.encrypted_to_host(r.key):
            tag = "  (NOT in the encrypted file: run reencrypt)"
        print(f"  {r.kind:5} {r.name:24} {r.key[:40]}...{tag}")
    print("on the hosts, each secret is readable by:")
    for name in SECRET_NAMES:
        readers = ", ".join(f"{c.name} (user {c.user})" for c in secret_readers(name))
        print(f"  {name:28} v{versions.get(name, 0):<3} {readers or '(no component)'}")
    return 0


def _public_key_arg(value: str, option: str) -> str:
    """A public key given literally ('ssh-ed25519 AAAA...') or as a .pub file."""
    if value.startswith(operators.ALGORITHM + " "):
        return operators.parse_key(value, option)
    path = Path(value).expanduser()
    if not path.is_file():
        raise CliError(f"{option}: no such file {path} (give a .pub file or 'ssh-ed25519 AAAA...')")
    return operators.parse_key(path.read_text(), f"{option} {path}")


def _new_key_pair(value: str) -> tuple[Path, str]:
    """--new-key: the new private key file, its public key next to it (FILE.pub)."""
    private = Path(value).expanduser()
    if private.suffix == ".pub":
        raise CliError(f"--new-key {private}: give the private key (its .pub must be next to it)")
    if not private.is_file():
        raise CliError(f"--new-key: no such file {private}")
    public_path = private.with_name(private.name + ".pub")
    if not public_path.is_file():
        raise CliError(f"--new-key: no public key {public_path} next to the private key")
    public = operators.parse_key(public_path.read_text(), f"--new-key {public_path}")
    # pyinfra connects with it unattended (a passphrase prompt would hang the run unseen)
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-P", "", "-f", str(private)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    if derived.returncode != 0:
        raise CliError(
            f"--new-key: {private} cannot be read without a passphrase (or is no private key):"
            " rotate with an unencrypted key and add the passphrase afterwards"
            " (ssh-keygen -p), or follow the manual steps in docs/secrets.md"
        )
    if operators.key_id(derived.stdout) != operators.key_id(public):
        raise CliError(f"--new-key: {private} is not the private key of {public_path}")
    return private, public


def cmd_operator_keys_list(args: argparse.Namespace) -> int:
    Environment.named(args.env)  # the name is checked like everywhere else
    path = operators.keys_path(args.env, Path(args.dir) if args.dir else None)
    keys = operators.read_keys(path)
    print(f"operator keys of {args.env}: {path}")
    if not keys:
        fallback = (
            " (staging: the harness's .staging/id_ed25519.pub)" if args.env == "staging" else ""
        )
        print(f"  none listed: group_data/{args.env}.py decides{fallback}")
    for key in keys:
        print(f"  {key.split()[2] if len(key.split()) > 2 else '(no name)':24} {key[:60]}...")
    return 0


def cmd_operator_keys_rotate(args: argparse.Namespace) -> int:
    """Add the new key, deploy, log in with it on every host, only then remove the old one."""
    Environment.named(args.env)  # the name is checked like everywhere else
    path = operators.keys_path(args.env, Path(args.dir) if args.dir else None)
    current = operators.read_keys(path)
    old = _public_key_arg(args.old, "--old")
    private, new = _new_key_pair(args.new_key)
    ids = [operators.key_id(k) for k in current]
    if operators.key_id(old) == operators.key_id(new):
        raise CliError("--old and --new-key are the same key")
    if operators.key_id(old) not in ids:
        raise CliError(f"--old: that key is not among the operator keys in {path}")
    inventory = _inventory(args)

    # 1. both keys authorised (a rerun after a failure resumes here)
    if operators.key_id(new) not in ids:
        operators.write_keys(path, args.env, [*current, new])
        print(f"added the new key to {path}")
    if not _deploy(inventory, (OPERATOR_KEYS_DEPLOY,)).ok:
        raise CliError(f"adding the new key failed: both keys stay in {path}; fix and run again")
    # 2. the new key logs in (and may sudo) on every host, or nothing is removed
    proof = _deploy(inventory, (OPERATOR_KEYS_DEPLOY,), "--key", str(private))
    if not proof.ok or proof.changed:
        raise CliError(
            f"the new key does not log in on every host: the old key stays authorised and both "
            f"stay in {path}; fix and run again"
        )
    # 3. remove the old key, connected with the new one
    kept = [k for k in operators.read_keys(path) if operators.key_id(k) != operators.key_id(old)]
    operators.write_keys(path, args.env, kept)
    print(f"removed the old key from {path}")
    if not _deploy(inventory, (OPERATOR_KEYS_DEPLOY,), "--key", str(private)).ok:
        raise CliError("removing the old key failed: run again (the new key logs in everywhere)")
    # 4. the inventory's own connection still works
    if not _deploy(inventory, (OPERATOR_KEYS_DEPLOY,)).ok:
        raise CliError(
            f"the old key is removed and the new one logs in everywhere, but {inventory} "
            f"connects with a key that is no longer authorised: set its ssh_key to {private}"
        )
    print("rotated: the new key logs in on every host, the old one is no longer authorised")
    print(f"commit {path.name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rave-secrets", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--env", default=STAGING_ENVIRONMENT, help="environment (default staging)")
    common.add_argument("--identity", help="age identity or OpenSSH ed25519 key file")
    common.add_argument("--dir", help="directory of the environment's files")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", parents=[common], help="create an environment")
    p.add_argument("--member", default=os.environ.get("USER", "operator"), help="your name")
    p.add_argument("--tls-name", action="append", help="name for the self-signed certificate")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("edit", parents=[common], help="edit the values in $EDITOR (tmpfs)")
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser("get", parents=[common], help="print one value (for scripts)")
    p.add_argument("name")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("set", parents=[common], help="set one value, read from stdin")
    p.add_argument("name")
    p.set_defaults(func=cmd_set)

    p = sub.add_parser("rotate", parents=[common], help="generate a new value for a secret")
    p.add_argument("name", choices=(*ROTATABLE, *NOT_ROTATABLE))
    p.add_argument("--no-overlap", action="store_true", help="webhook: drop the old secret now")
    p.add_argument(
        "--retire-old",
        action="store_true",
        help="webhook, backup password: only drop the previous value (after the deploy)",
    )
    p.add_argument("--tls-name", action="append", help="names for a new certificate")
    p.add_argument("--deploy", action="store_true", help="deploy it now (full deploy.py)")
    p.add_argument("--inventory", help="with --deploy (default inventories/ENV.py)")
    p.set_defaults(func=lambda a: cmd_retire(a) if a.retire_old else cmd_rotate(a))

    p = sub.add_parser("operator-keys", help="the operators' SSH keys (authorized_keys)")
    osub = p.add_subparsers(dest="action", required=True)
    plain = argparse.ArgumentParser(add_help=False)
    plain.add_argument("--env", default=STAGING_ENVIRONMENT, help="environment (default staging)")
    plain.add_argument("--dir", help="directory of the environment's files")
    q = osub.add_parser("list", parents=[plain], help="the operator keys of the environment")
    q.set_defaults(func=cmd_operator_keys_list)
    q = osub.add_parser(
        "rotate", parents=[plain], help="replace a key: add, prove login on every host, remove"
    )
    q.add_argument(
        "--old", required=True, help="the key to replace: .pub file or 'ssh-ed25519 ...'"
    )
    q.add_argument(
        "--new-key", required=True, help="the new private key file (FILE.pub next to it)"
    )
    q.add_argument("--inventory", help="default inventories/ENV.py")
    q.set_defaults(func=cmd_operator_keys_rotate)

    p = sub.add_parser("recipients", help="add or remove a team member or a host")
    rsub = p.add_subparsers(dest="action", required=True)
    for action in ("add", "remove"):
        q = rsub.add_parser(action, parents=[common])
        who = q.add_mutually_exclusive_group(required=True)
        who.add_argument("--member", help="team member name")
        who.add_argument("--host", help="host name")
        if action == "add":
            q.add_argument("--key", required=True, help="age1... or 'ssh-ed25519 AAAA...'")
        q.set_defaults(func=cmd_recipients, key=None)

    p = sub.add_parser("reencrypt", parents=[common], help="re-encrypt to the recipients file")
    p.set_defaults(func=cmd_reencrypt)

    p = sub.add_parser("list", parents=[common], help="who can read what")
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (CliError, StoreError, crypto.CryptoError, SecretsFormatError) as error:
        sys.stderr.write(f"rave-secrets: {error}\n")
        return 1
    except generate.GenerateError as error:
        sys.stderr.write(f"rave-secrets: {error}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
