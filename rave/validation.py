"""Validate every host's data against HostSettings before pyinfra connects to anything."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
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
    missing = missing_credentials(s.backup_repository, env.present())
    source = origin.get("backup_repository", "defaults (no file sets it)")
    return [
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
