"""Validate every host's data against HostSettings before pyinfra connects to anything."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rave.settings import PASSTHROUGH_PREFIXES, HostSettings
from rave.settings.backup import missing_credentials, repository_backend
from rave.topology import derived_data


def _pyinfra_connector_keys() -> frozenset[str]:
    from pyinfra.connectors.ssh import ConnectorData

    return frozenset(ConnectorData.__annotations__)


@dataclass(frozen=True)
class DataLayer:
    """One place host data came from, most specific first (as pyinfra looks it up)."""

    source: str  # a file name an operator can open
    data: Mapping[str, Any]


class HostDataError(Exception):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid host data:\n" + "\n".join(f"  - {p}" for p in problems))


def settings_input(layers: Iterable[DataLayer]) -> tuple[dict[str, Any], dict[str, str]]:
    """Merge the layers (first wins) into settings input, remembering where each key came from."""
    connector_keys = _pyinfra_connector_keys()
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for layer in layers:
        for key, value in layer.data.items():
            if key in merged or key in connector_keys or key.startswith(PASSTHROUGH_PREFIXES):
                continue
            merged[key] = value
            origin[key] = layer.source
    return merged, origin


def validate_host(name: str, layers: list[DataLayer]) -> HostSettings:
    data, origin = settings_input(layers)
    if "hostname" not in data:
        data["hostname"] = name.split(".")[0]
        origin["hostname"] = "the inventory's host name (set hostname to override)"
    try:
        settings = HostSettings.model_validate(data)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            field = ".".join(str(part) for part in item["loc"]) or "(host data)"
            top = str(item["loc"][0]) if item["loc"] else ""
            source = origin.get(top, "defaults (no file sets it)")
            message = item["msg"]
            if item["type"] == "extra_forbidden":
                message = "unknown setting (a typo? every setting is declared in rave/settings/)"
            problems.append(f"host {name}: {field} in {source}: {message}")
        raise HostDataError(problems) from None
    problems = acknowledgement_problems(name, settings, origin)
    problems += credential_problems(name, settings, origin)
    if problems:
        raise HostDataError(problems)
    return settings


@dataclass(frozen=True)
class AcknowledgedRisk:
    """A setting production refuses unless its acknowledgement is set in the same file (the
    same data layer): whoever turns the risk on in that file also signs for it there, and a
    shared file (group_data/all.py) cannot sign for every environment. Staging is exempt;
    acknowledged, the alert stands."""

    setting: str  # the setting that brings the risk
    acknowledgement: str  # the bool setting that accepts it
    applies: Callable[[HostSettings], bool]
    risk: str  # what is wrong with it, after "<setting> in <file> (<value>)"
    instead: str  # what to do rather than acknowledge it
    alert: str  # stands while the risk does


def _backup_repository_on_host(s: HostSettings) -> bool:
    return s.backup_enabled and repository_backend(s.backup_repository) == "local"


ACKNOWLEDGED_RISKS = (
    AcknowledgedRisk(
        setting="backup_repository",
        acknowledgement="backup_local_repository_acknowledged",
        applies=_backup_repository_on_host,
        risk="is on the host's own disk",
        instead="set a remote repository (sftp:, s3:, rest:, ...; docs/DEPLOYMENT-GUIDE.md)",
        alert="BackupRepositoryOnHost",
    ),
    AcknowledgedRisk(
        setting="debug_mode",
        acknowledgement="debug_mode_acknowledged",
        applies=lambda s: s.debug_mode,
        risk="turns on verbose logs",
        instead='turn it off again (docs/operations.md, "Debug mode")',
        alert="DebugModeOn",
    ),
    AcknowledgedRisk(
        setting="backup_pgbackrest_repo_path",
        acknowledgement="backup_local_repository_acknowledged",
        applies=lambda s: s.backup_enabled and pgbackrest_on_host(s),
        risk="is on the host's own disk",
        instead="mount remote storage there (docs/backup.md)",
        alert="BackupRepositoryOnHost",
    ),
)


def acknowledgement_problems(name: str, s: HostSettings, origin: dict[str, str]) -> list[str]:
    """Every ACKNOWLEDGED_RISKS entry a production host carries without its acknowledgement
    next to it."""
    from rave.secrets.store import STAGING_ENVIRONMENT

    if s.rave_environment == STAGING_ENVIRONMENT:
        return []
    problems = []
    for rule in ACKNOWLEDGED_RISKS:
        if not rule.applies(s):
            continue
        source = origin.get(rule.setting)
        acknowledged = origin.get(rule.acknowledgement)
        given = bool(getattr(s, rule.acknowledgement))
        # a risk that is the default (no file sets it) is signed for wherever it is acknowledged
        if given and (source is None or acknowledged == source):
            continue
        where = source or "defaults (no file sets it)"
        put = source or acknowledged or "the production group data (group_data/<group>.py)"
        if given:
            detail = f"is acknowledged in {acknowledged}, not next to {rule.setting}"
        else:
            detail = "is not acknowledged"
        problems.append(
            f"host {name}: {rule.setting} in {where} ({getattr(s, rule.setting)}) {rule.risk} "
            f"in environment {s.rave_environment!r} and {detail}: {rule.instead}, or set "
            f"{rule.acknowledgement} = True in {put} (the {rule.alert} alert then stands)"
        )
    return problems


def pgbackrest_on_host(s: HostSettings) -> bool:
    """pgBackRest's repository is a posix path (this host's disk, or a mount of it)."""
    return pgbackrest_used(s) and s.backup_pgbackrest_repo_type == "posix"


def pgbackrest_used(s: HostSettings) -> bool:
    """PostgreSQL runs here and pgBackRest backs it up (a monitoring host runs no database)."""
    return s.backup_wal_archiving and s.backup_databases and not s.monitoring_role


def credential_problems(name: str, s: HostSettings, origin: dict[str, str]) -> list[str]:
    """A remote backup repository without its credentials in the secrets (from the public
    <env>.present file: nothing is decrypted)."""
    from rave.secrets.store import Environment, StoreError

    if not (s.backup_enabled and s.secrets_deploy):
        return []
    try:
        env = Environment.for_host(s.rave_environment, s.secrets_file, s.secrets_recipients_file)
    except StoreError:
        return []  # the secrets task reports a bad environment name itself
    if not env.exists():
        return []  # no secrets file at all: the secrets task refuses it, naming the file
    present = env.present()
    missing = missing_credentials(s.backup_repository, present)
    source = origin.get("backup_repository", "defaults (no file sets it)")
    cipher = "backup_pgbackrest_cipher_password"
    no_cipher = [
        f"host {name}: backup_wal_archiving (pgBackRest) needs the secret {cipher} (the "
        f"repository's cipher pass), which {env.encrypted_path} does not hold: set it with "
        f"`rave-secrets set {cipher} --env {s.rave_environment}` (docs/backup.md)"
    ]
    s3_keys = [
        f"host {name}: backup_pgbackrest_repo_type s3 needs the secret {secret}, which "
        f"{env.encrypted_path} does not hold: set it with `rave-secrets set {secret} --env "
        f"{s.rave_environment}` (docs/backup.md)"
        for secret in ("backup_pgbackrest_s3_key", "backup_pgbackrest_s3_key_secret")
        if pgbackrest_used(s) and s.backup_pgbackrest_repo_type == "s3" and not present.get(secret)
    ]
    return (
        (no_cipher if pgbackrest_used(s) and not present.get(cipher) else [])
        + s3_keys
        + [
            f"host {name}: backup_repository in {source} ({s.backup_repository.split(':', 1)[0]}:) "
            f"needs the secret {needed}, which {env.encrypted_path} does not hold: set it with "
            f"`rave-secrets edit --env {s.rave_environment}` (docs/backup.md)"
            for needed in missing
        ]
    )


# how pyinfra connects: read from the same layers, never validated as settings
LOGIN_KEYS = ("ssh_user", "ssh_key", "ssh_key_password", "ssh_allow_agent", "ssh_look_for_keys")
# the files ssh and paramiko try when no key is named (ssh_look_for_keys)
DEFAULT_IDENTITIES = ("id_ed25519", "id_ecdsa", "id_rsa")


# a run that logs in as someone the hardened sshd will not admit: ops/bootstrap.py connects as
# root to hand a host over to operator_user, and proves the operator's login itself
LOGIN_HANDOVER = "ops/bootstrap.py"


def login_checks_apply(operations: Iterable[str]) -> bool:
    """Whether the deploy-login checks apply to a run of these operation files (every run but
    the bootstrap hand-over)."""
    files = [Path(op).resolve() for op in operations]
    return not files or any(op != Path(LOGIN_HANDOVER).resolve() for op in files)


def connection_input(layers: Iterable[DataLayer]) -> tuple[dict[str, Any], dict[str, str]]:
    """The login data of the layers (first wins), remembering where each key came from."""
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for layer in layers:
        for key in LOGIN_KEYS:
            if key in layer.data and key not in merged and layer.data[key] is not None:
                merged[key] = layer.data[key]
                origin[key] = layer.source
    return merged, origin


def _key_id(key: str) -> tuple[str, ...]:
    """An OpenSSH public key line without its comment."""
    return tuple(key.split()[:2])


def deploy_public_keys(login: Mapping[str, Any]) -> set[tuple[str, ...]] | None:
    """The public keys pyinfra may log in with (None: ssh_key is set but its public key cannot
    be read here). ssh_key: its .pub next to it, else derived from the private key; no ssh_key:
    the agent's keys and the default identities' .pub files, as paramiko tries them."""
    import paramiko

    path = login.get("ssh_key")
    if path:
        private = Path(str(path)).expanduser()
        public = Path(f"{private}.pub")
        if public.is_file():
            return {_key_id(public.read_text())}
        try:
            key = paramiko.PKey.from_path(private, passphrase=login.get("ssh_key_password"))
        except (OSError, paramiko.SSHException, ValueError):
            return None
        return {(key.get_name(), key.get_base64())}
    found: set[tuple[str, ...]] = set()
    if login.get("ssh_allow_agent", True) and os.environ.get("SSH_AUTH_SOCK"):
        with contextlib.suppress(paramiko.SSHException):
            found |= {(k.get_name(), k.get_base64()) for k in paramiko.Agent().get_keys()}
    if login.get("ssh_look_for_keys", True):
        for name in DEFAULT_IDENTITIES:
            public = Path.home() / ".ssh" / f"{name}.pub"
            if public.is_file():
                found.add(_key_id(public.read_text()))
    return found


def deploy_login_problems(
    name: str,
    s: HostSettings,
    origin: dict[str, str],
    login: Mapping[str, Any],
    where: dict[str, str],
) -> list[str]:
    """The deploy's own login must survive the sshd_config and authorized_keys it installs:
    sshd admits only members of sshd_allow_groups (the deploy makes operator_user one, and no
    one else), root only with sshd_permit_root_login = prohibit-password, and operator_user's
    authorized_keys is exactly operator_keys. Checked before connecting; the staged change on
    the host (tasks/hardening.py) is the second line."""
    if name.startswith("@"):  # @local, @docker...: not an SSH login
        return []
    user = login.get("ssh_user")
    user_source = where.get("ssh_user", "")
    if user is None:
        return [
            f"host {name}: ssh_user is not set: the deploy cannot prove before connecting that "
            f"its own login survives the SSH settings it installs; set ssh_user = "
            f"{s.operator_user!r} (operator_user) in the inventory"
        ]
    if user == "root":
        problems = []
        if s.sshd_permit_root_login != "prohibit-password":
            problems.append(
                f"host {name}: sshd_permit_root_login in "
                f"{origin.get('sshd_permit_root_login', 'defaults (no file sets it)')} is "
                f"{s.sshd_permit_root_login!r} but the deploy logs in as root (ssh_user in "
                f"{user_source}): it would lock itself out; deploy as {s.operator_user!r} "
                "(operator_user; ops/bootstrap.py hands a root-only host over to it)"
            )
        if "root" not in s.sshd_allow_groups:
            problems.append(
                f"host {name}: sshd_allow_groups in "
                f"{origin.get('sshd_allow_groups', 'defaults (no file sets it)')} "
                f"({' '.join(s.sshd_allow_groups)}) does not admit root, as which the deploy "
                f"logs in (ssh_user in {user_source}): it would lock itself out; deploy as "
                f"{s.operator_user!r} (operator_user)"
            )
        return problems
    if user != s.operator_user:
        return [
            f"host {name}: ssh_user in {user_source} is {user!r}, but sshd_allow_groups "
            f"({' '.join(s.sshd_allow_groups)}) admits only members, and the deploy makes only "
            f"operator_user ({s.operator_user!r}, in "
            f"{origin.get('operator_user', 'defaults (no file sets it)')}) one: it would lock "
            f"itself out; set ssh_user = {s.operator_user!r}"
        ]
    keys = deploy_public_keys(login)
    key_source = (
        f"ssh_key in {where['ssh_key']} ({login['ssh_key']})"
        if "ssh_key" in login
        else "no ssh_key (the agent's keys and ~/.ssh/id_*.pub)"
    )
    if keys is None:
        return [
            f"host {name}: {key_source}: its public key cannot be read here, so the deploy "
            f"cannot prove that operator_keys keeps it; put the .pub next to it"
        ]
    if not keys & {_key_id(key) for key in s.operator_keys}:
        return [
            f"host {name}: operator_keys in "
            f"{origin.get('operator_keys', 'defaults (no file sets it)')} does not hold the key "
            f"the deploy logs in with ({key_source}): authorized_keys of {user} would lock the "
            "deploy out; keep that key in the list (secrets/<env>.operator-keys), or connect with "
            "one of the listed keys (`rave-secrets operator-keys rotate` changes keys safely)"
        ]
    return []


def inventory_layers(inventory: Any, host: Any, inventory_file: str) -> list[DataLayer]:
    """The data layers of a pyinfra host, in pyinfra's own lookup order."""
    layers = [
        DataLayer("command line --data", inventory.get_override_data()),
        DataLayer(f"{inventory_file} (host {host.name})", inventory.get_host_data(host.name)),
    ]
    layers += [
        DataLayer(f"group_data/{group}.py", inventory.get_group_data(group))
        for group in host.groups
    ]
    layers.append(DataLayer("group_data/all.py", inventory.get_data()))
    try:
        derived = derived_data(inventory, host)
    except ValueError as error:
        raise HostDataError([f"host {host.name}: {error}"]) from None
    layers.append(DataLayer("the inventory's groups (rave/topology.py)", derived))
    return layers


def validate_inventory(
    inventory: Any, inventory_file: str, login_checks: bool = False
) -> dict[str, HostSettings]:
    """Every host's settings, or HostDataError listing every problem. login_checks: also refuse
    settings that would lock the deploy's own login out (deploy_login_problems; config.py sets it
    for every run but the root-to-operator hand-over of ops/bootstrap.py)."""
    problems: list[str] = []
    settings: dict[str, HostSettings] = {}
    for host in inventory:
        try:
            layers = inventory_layers(inventory, host, inventory_file)
            settings[host.name] = validate_host(host.name, layers)
        except HostDataError as error:
            problems += error.problems
            continue
        if login_checks:
            _, origin = settings_input(layers)
            login, where = connection_input(layers)
            problems += deploy_login_problems(host.name, settings[host.name], origin, login, where)
    if problems:
        raise HostDataError(problems)
    return settings
