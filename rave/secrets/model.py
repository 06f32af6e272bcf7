"""The typed set of secret values of an environment.

The encrypted file holds the JSON of SecretsModel. A file that does not match is refused with
the missing or wrong key named. Which component reads which value is declared in
rave/components.py (Component.secrets); tests check both stay in step.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PASSWORD_MIN = 16
# htpasswd lines nginx accepts: apr1 (openssl passwd -apr1) or bcrypt ($2y$)
HTPASSWD_LINE = re.compile(
    r"^[A-Za-z0-9_.-]+:"
    r"(\$apr1\$[./0-9A-Za-z]{1,8}\$[./0-9A-Za-z]{22}|\$2[aby]\$\d\d\$[./0-9A-Za-z]{53})$"
)


def _password(value: str, name: str) -> str:
    if len(value) < PASSWORD_MIN:
        raise ValueError(f"{name} must be at least {PASSWORD_MIN} characters")
    if any(ch.isspace() for ch in value) or not value.isprintable():
        raise ValueError(f"{name} must be printable, without whitespace")
    return value


class AlertReceiver(BaseModel):
    """One Alertmanager receiver's credentials (the routing itself is in the observability task)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=r"^[a-z][a-z0-9_-]*$", description="receiver name in alertmanager.yml"
    )
    webhook_urls: list[str] = Field(
        default_factory=list, description="webhook_configs URLs (may embed a token)"
    )
    email_to: list[str] = Field(default_factory=list, description="recipients of alert e-mails")
    smtp_smarthost: str | None = Field(None, description="host:port of the SMTP relay")
    smtp_username: str | None = Field(None, description="SMTP login")
    smtp_password: str | None = Field(None, description="SMTP password")
    slack_webhook_urls: list[str] = Field(
        default_factory=list, description="Slack incoming-webhook URLs (carry a token)"
    )
    pagerduty_routing_keys: list[str] = Field(
        default_factory=list, description="PagerDuty Events API v2 routing keys"
    )


class SecretsModel(BaseModel):
    """Every secret value of one environment (field names are the secret names)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tls_certificate: str = Field(description="PEM certificate chain served by nginx")
    tls_private_key: str = Field(description="PEM private key of tls_certificate")
    webhook_hmac_secrets: list[str] = Field(
        min_length=1,
        max_length=4,
        description="active webhook HMAC secrets, newest first (two during a rotation)",
    )
    postgres_webhook_password: str = Field(description="PostgreSQL role of the webhook")
    postgres_exporter_password: str = Field(description="PostgreSQL role of postgres_exporter")
    grafana_admin_password: str = Field(description="Grafana's admin user")
    alertmanager_receivers: list[AlertReceiver] = Field(
        min_length=1, description="Alertmanager receivers with their credentials"
    )
    backup_repository_password: str = Field(description="encryption password of the backups")
    ccr_api_keys: dict[str, str] = Field(
        description="Claude Code Router provider name -> API key (may be empty)"
    )
    ccr_ui_password_hash: str = Field(description="htpasswd line (user:$apr1$...) for /ccr-ui/")
    ccr_ui_password: str | None = Field(
        None, description="the password behind ccr_ui_password_hash, for operators; read by no host"
    )

    @field_validator("tls_certificate")
    @classmethod
    def _certificate(cls, value: str) -> str:
        if "-----BEGIN CERTIFICATE-----" not in value or "-----END CERTIFICATE-----" not in value:
            raise ValueError("not a PEM certificate (-----BEGIN CERTIFICATE-----)")
        return value if value.endswith("\n") else value + "\n"

    @field_validator("tls_private_key")
    @classmethod
    def _private_key(cls, value: str) -> str:
        if not re.search(r"-----BEGIN ([A-Z]+ )?PRIVATE KEY-----", value):
            raise ValueError("not a PEM private key (-----BEGIN PRIVATE KEY-----)")
        return value if value.endswith("\n") else value + "\n"

    @field_validator("webhook_hmac_secrets")
    @classmethod
    def _hmac(cls, values: list[str]) -> list[str]:
        for value in values:
            if len(value) < 32:
                raise ValueError("every webhook HMAC secret must be at least 32 characters")
            _password(value, "a webhook HMAC secret")
        if len(set(values)) != len(values):
            raise ValueError("duplicate webhook HMAC secret")
        return values

    @field_validator(
        "postgres_webhook_password",
        "postgres_exporter_password",
        "grafana_admin_password",
        "backup_repository_password",
    )
    @classmethod
    def _passwords(cls, value: str) -> str:
        return _password(value, "password")

    @field_validator("ccr_ui_password_hash")
    @classmethod
    def _htpasswd(cls, value: str) -> str:
        value = value.strip()
        if not HTPASSWD_LINE.match(value):
            raise ValueError("not an htpasswd line 'user:$apr1$salt$hash' or 'user:$2y$...'")
        return value


SECRET_NAMES: tuple[str, ...] = tuple(SecretsModel.model_fields)


class SecretsFormatError(ValueError):
    """The decrypted content does not match SecretsModel; the message names the keys."""


def describe_errors(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(whole file)"
        if item["type"] == "missing":
            message = "missing"
        elif item["type"] == "extra_forbidden":
            message = "unknown key (not in rave/secrets/model.py)"
        else:
            message = item["msg"]
        lines.append(f"  - {key}: {message}")
    return f"{source} does not match the secrets model:\n" + "\n".join(lines)


def parse(data: Any, source: str = "the secrets") -> SecretsModel:
    try:
        return SecretsModel.model_validate(data)
    except ValidationError as error:
        raise SecretsFormatError(describe_errors(error, source)) from None


def from_json(text: str | bytes, source: str = "the secrets") -> SecretsModel:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise SecretsFormatError(f"{source} is not JSON: line {error.lineno}") from None
    return parse(data, source)


def to_json(model: SecretsModel) -> bytes:
    """Canonical JSON (what is encrypted; what the host splits into files)."""
    return (json.dumps(model.model_dump(mode="json"), indent=1, sort_keys=True) + "\n").encode()


def file_content(model: SecretsModel, name: str) -> str:
    """The content of /run/rave/secrets/<component>/<name>: text as is, structures as JSON."""
    value = getattr(model, name)
    if isinstance(value, str):
        return value
    return json.dumps(model.model_dump(mode="json")[name], sort_keys=True)
