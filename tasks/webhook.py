"""The webhook receiver: its code (shipped as /opt/rave/lib/rave_webhook, run by Debian's
python3), the schema migrations of its database, and a sandboxed systemd unit on loopback."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import FactBase, deploy
from pyinfra.operations import server

from rave.components import Exposure, component
from rave.deploykit import (
    ensure_directory,
    ensure_packages,
    owned_service,
    settings,
    sync_tree,
)
from rave.render import render
from rave.sandbox import Sandbox, dropin_text
from rave.secrets.deploy import secret_path, secrets_changed
from rave.settings import HostSettings
from rave.webhook import migrate
from tasks.database import DATABASE, WRITER_ROLE, unit_name

LIB_DIR = "/opt/rave/lib"
PACKAGE = "rave_webhook"
CODE_DIR = f"{LIB_DIR}/{PACKAGE}"
CONFIG_FILE = "/etc/rave-webhook/config.json"
STATE_DIR_NAME = "rave-webhook"
UNIT = component("webhook").unit
# uvloop and httptools: less CPU per request (uvicorn picks uvloop up by itself)
EXTRA_PACKAGES = ("python3-uvloop", "python3-httptools")


class AppliedMigrations(FactBase):
    """Versions in schema_migrations ([] when the database or the table does not exist yet)."""

    @staticmethod
    def default() -> list[str]:
        return []

    def command(self, database: str) -> str:
        return (
            f"cd / && runuser -u postgres -- psql -XAtq -d {database} "
            "-c 'SELECT version FROM schema_migrations ORDER BY version' 2>/dev/null || true"
        )

    def process(self, output: list[str]) -> list[str]:
        return [line.strip() for line in output if line.strip()]


def sandbox(config: HostSettings) -> Sandbox:
    return Sandbox(
        read_write_paths=(f"/var/lib/{STATE_DIR_NAME}", f"/run/{STATE_DIR_NAME}"),
        address_families=("AF_INET", "AF_INET6", "AF_UNIX"),
        extra=(
            ("IPAddressAllow", "localhost"),
            ("IPAddressDeny", "any"),
        ),
    )


def app_config(config: HostSettings) -> dict[str, object]:
    port = next(p.number for p in component("webhook").ports if p.exposure is Exposure.LOOPBACK)
    return {
        "listen_host": "127.0.0.1",
        "listen_port": port,
        "workers": config.profile.webhook_workers,
        "http_impl": config.webhook_http_impl,
        "spool_dir": f"/var/lib/{STATE_DIR_NAME}/spool",
        "spool_segment_bytes": config.webhook_spool_segment_bytes,
        "spool_max_bytes": config.webhook_spool_max_bytes,
        "max_body_bytes": config.webhook_max_body_bytes,
        "standard_webhooks": config.webhook_standard_webhooks,
        "gitlab": config.webhook_gitlab,
        "timestamp_tolerance_seconds": config.webhook_timestamp_tolerance_seconds,
        "drain_batch": config.webhook_drain_batch,
        "dead_letter_dir": f"/var/lib/{STATE_DIR_NAME}/deadletter",
        "hmac_secrets_file": secret_path("webhook", "webhook_hmac_secrets"),
        "standard_secrets_file": secret_path("webhook", "webhook_standard_secrets"),
        "gitlab_tokens_file": secret_path("webhook", "webhook_gitlab_tokens"),
        "db_password_file": secret_path("webhook", "postgres_webhook_password"),
        "db_host": "127.0.0.1",
        "db_port": component("postgresql").ports[0].number,
        "db_name": DATABASE,
        "db_user": WRITER_ROLE,
        "debug": config.debug_mode,
    }


def unit_context(config: HostSettings) -> dict[str, object]:
    return {
        "postgres_unit": unit_name(config),
        "user": component("webhook").user,
        "lib_dir": LIB_DIR,
        "config_file": CONFIG_FILE,
        "package": PACKAGE,
        "state_dir_name": STATE_DIR_NAME,
    }


def templates(config: HostSettings) -> dict[str, dict[str, object]]:
    return {"webhook/rave-webhook.service.j2": unit_context(config)}


@deploy("Webhook")
def webhook() -> None:
    config = settings()
    user = component("webhook").user
    assert user is not None
    ensure_packages(
        "Install the receiver's Python packages (Debian's)",
        [*component("webhook").packages, *EXTRA_PACKAGES],
    )

    ensure_directory(name="Library directory", path=LIB_DIR, user="root", group="root", mode="755")
    code = sync_tree(
        name="Ship the receiver's code",
        src="rave/webhook",
        dest=CODE_DIR,
        user="root",
        group="root",
        mode="644",
        dir_mode="755",
    )

    applied = set(host.get_fact(AppliedMigrations, database=DATABASE))
    pending = [m.name for m in migrate.available() if m.version not in applied]
    if pending:
        server.shell(
            name=f"Migrate the {DATABASE} schema: {', '.join(pending)}",
            commands=[
                f"cd / && runuser -u postgres -- env PYTHONPATH={LIB_DIR} "
                f"PYTHONDONTWRITEBYTECODE=1 python3 -m {PACKAGE}.migrate apply"
            ],
        )

    owned_service(
        "Receiver",
        UNIT,
        group=user,
        settings_path=CONFIG_FILE,
        settings=app_config(config),
        unit_text=render("webhook/rave-webhook.service.j2", **unit_context(config)),
        sandbox_text=dropin_text(
            sandbox(config),
            config.profile.limits_for("webhook"),
            "the webhook receiver: loopback only, writes only its spool",
        ),
        secrets_changed=secrets_changed("webhook"),
        restart_on=[code],
    )
