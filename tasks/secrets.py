"""Secrets: ship the encrypted file (never plaintext) and decrypt it on the host into tmpfs.

The host must be a recipient (its ssh-ed25519 host key in the environment's recipients and
in the encrypted file's header); otherwise the deploy stops before any operation runs and
prints the command that adds it. See docs/secrets.md.
"""

from __future__ import annotations

from typing import Any

from pyinfra import host
from pyinfra.api import DeployError, FactBase, deploy
from pyinfra.operations import systemd
from pyinfra.operations.util import any_changed

from rave.deploykit import (
    ensure_directory,
    ensure_group,
    ensure_packages,
    ensure_service,
    ensure_user,
    install_host_script,
    put_file,
    put_template,
    put_text,
    settings,
)
from rave.render import FILES
from rave.runstate import ExistingUsers
from rave.sandbox import Sandbox, dropin_text
from rave.secrets import deploy as sd
from rave.secrets.store import Environment
from rave.settings import HostSettings


class HostEd25519Key(FactBase[str]):
    """The host's public ssh-ed25519 key (empty when it has none)."""

    def command(self) -> str:
        return "cat /etc/ssh/ssh_host_ed25519_key.pub 2>/dev/null || true"

    def process(self, output: list[str]) -> str:
        return " ".join(" ".join(output).split()[:2])


# The decrypting service: root (reads the host key, chowns), no network, writes /run/rave only.
SANDBOX = Sandbox(
    address_families=("AF_UNIX",),
    capabilities=("CAP_CHOWN", "CAP_FOWNER", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH"),
    syscall_filter=(
        "@system-service",
        # not ~@resources: age (Go) raises its RLIMIT_NOFILE at start
        "~@mount @debug @cpu-emulation @obsolete @raw-io @reboot @swap @clock @module",
    ),
    protect_proc="default",
    extra=(("PrivateNetwork", "yes"), ("IPAddressDeny", "any")),
)


def templates(config: HostSettings) -> dict[str, dict[str, object]]:
    """Every template this task renders, for the unit tests (name -> context)."""
    return {"secrets/rave-secrets.service.j2": unit_context()}


def unit_context() -> dict[str, Any]:
    return {
        "encrypted": sd.REMOTE_ENCRYPTED,
        "root": sd.SECRETS_ROOT,
        "consumers": sd.consumer_units(),
        "script": sd.INSTALL_SCRIPT,
    }


@deploy("Secrets")
def secrets() -> None:
    config = settings()
    if not config.secrets_deploy:
        return
    env = Environment.for_host(
        config.rave_environment, config.secrets_file, config.secrets_recipients_file
    )
    # facts first: refuse before a single operation is queued for this host
    problem = sd.recipient_problem(env, host.name, host.get_fact(HostEd25519Key))
    if problem:
        raise DeployError(problem)
    problems = sd.check_declarations()
    if problems:
        raise DeployError("; ".join(problems))
    versions = env.versions()
    existing_users = host.get_fact(ExistingUsers, names=tuple(sd.account_names()))

    ensure_packages("Install age and python3 (decryption on the host)", ["age", "python3"])

    # every reader's account and each component's own one, before its package is installed
    for account in sd.accounts_to_create(existing_users):
        ensure_group(name=f"Create group {account.name}", group=account.name, system=True)
        ensure_user(
            name=f"Create service account {account.name}",
            user=account.name,
            group=account.name,
            home=account.home,
            shell=account.shell,
            system=True,
            create_home=False,
            ensure_home=account.ensure_home,
        )

    ensure_directory(
        name="Create /etc/rave", path="/etc/rave", user="root", group="root", mode="755"
    )
    encrypted = put_file(
        f"Upload the encrypted {env.name} secrets (ciphertext only)",
        str(env.encrypted_path),
        sd.REMOTE_ENCRYPTED,
        mode="600",
    )
    ensure_directory(
        name="Create the secrets manifest directory",
        path=sd.REMOTE_MANIFESTS,
        user="root",
        group="root",
        mode="755",
    )
    manifest_ops = []
    for component in sd.readers():
        op = put_text(
            f"Manifest of {component.name}'s secrets",
            f"{sd.REMOTE_MANIFESTS}/{component.name}.json",
            sd.manifest(component, versions),
            mode="644",
        )
        sd.record_manifest_op(host.name, component.name, op)
        manifest_ops.append(op)
    script = install_host_script(
        "Install the decrypting script",
        str(FILES / "secrets" / "rave-secrets-install"),
        sd.INSTALL_SCRIPT,
    )
    unit = put_template(
        "Install rave-secrets.service",
        "secrets/rave-secrets.service.j2",
        f"/etc/systemd/system/{sd.UNIT}.service",
        **unit_context(),
    )
    dropin = put_text(
        "Sandbox rave-secrets.service",
        f"/etc/systemd/system/{sd.UNIT}.service.d/sandbox.conf",
        dropin_text(SANDBOX, None, "the secrets decryptor: root, no network, writes /run/rave"),
    )
    systemd.daemon_reload(
        name="Reload systemd (rave-secrets.service changed)", _if=any_changed(unit, dropin)
    )
    ensure_service(
        name="Enable and start rave-secrets.service",
        service=f"{sd.UNIT}.service",
        running=True,
        enabled=True,
    )
    ensure_service(
        name="Decrypt the changed secrets (reload rave-secrets.service)",
        service=f"{sd.UNIT}.service",
        reloaded=True,
        _if=any_changed(encrypted, script, unit, dropin, *manifest_ops),
    )
