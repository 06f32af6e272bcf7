"""Validate every host's data against HostSettings before pyinfra connects to anything."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
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
    problems = local_repository_problems(name, settings, origin)
    problems += credential_problems(name, settings, origin)
    if problems:
        raise HostDataError(problems)
    return settings


def local_repository_problems(name: str, s: HostSettings, origin: dict[str, str]) -> list[str]:
    """Production keeps its backups off the host: a restic repository on the host's own disk,
    or a posix pgBackRest repository, is refused unless backup_local_repository_acknowledged is
    set in the same file as that repository's setting (staging is exempt). Acknowledged, the
    BackupRepositoryOnHost alert stands."""
    from rave.secrets.store import STAGING_ENVIRONMENT

    if not s.backup_enabled or s.rave_environment == STAGING_ENVIRONMENT:
        return []
    on_host = []
    if repository_backend(s.backup_repository) == "local":
        on_host.append(("backup_repository", s.backup_repository))
    if pgbackrest_on_host(s):
        on_host.append(("backup_pgbackrest_repo_path", s.backup_pgbackrest_repo_path))
    problems = []
    acknowledged = origin.get("backup_local_repository_acknowledged")
    for setting, value in on_host:
        source = origin.get(setting)
        if s.backup_local_repository_acknowledged and (source is None or acknowledged == source):
            continue
        where = source or "defaults (no file sets it)"
        put = source or acknowledged or "the production group data (group_data/<group>.py)"
        if s.backup_local_repository_acknowledged and acknowledged != source:
            detail = f"is acknowledged in {acknowledged}, not next to {setting}"
        else:
            detail = "is not acknowledged"
        remote = (
            "set a remote repository (sftp:, s3:, rest:, ...; docs/DEPLOYMENT-GUIDE.md)"
            if setting == "backup_repository"
            else "mount remote storage there (docs/backup.md)"
        )
        problems.append(
            f"host {name}: {setting} in {where} ({value}) is on the host's "
            f"own disk in environment {s.rave_environment!r} and {detail}: {remote}, or set "
            f"backup_local_repository_acknowledged = True in {put} (the BackupRepositoryOnHost "
            "alert then stands)"
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
    present = env.present()
    missing = missing_credentials(s.backup_repository, present)
    source = origin.get("backup_repository", "defaults (no file sets it)")
    cipher = "backup_pgbackrest_cipher_password"
    no_cipher = [
        f"host {name}: backup_wal_archiving (pgBackRest) needs the secret {cipher} (the "
        f"repository's cipher pass), which {env.encrypted_path} does not hold: set it with "
        f"`rave-secrets set {cipher} --env {s.rave_environment}` (docs/backup.md)"
    ]
    return (no_cipher if pgbackrest_used(s) and not present.get(cipher) else []) + [
        f"host {name}: backup_repository in {source} ({s.backup_repository.split(':', 1)[0]}:) "
        f"needs the secret {needed}, which {env.encrypted_path} does not hold: set it with "
        f"`rave-secrets edit --env {s.rave_environment}` (docs/backup.md)"
        for needed in missing
    ]


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


def validate_inventory(inventory: Any, inventory_file: str) -> dict[str, HostSettings]:
    problems: list[str] = []
    settings: dict[str, HostSettings] = {}
    for host in inventory:
        try:
            settings[host.name] = validate_host(
                host.name, inventory_layers(inventory, host, inventory_file)
            )
        except HostDataError as error:
            problems += error.problems
    if problems:
        raise HostDataError(problems)
    return settings
