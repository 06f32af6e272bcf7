"""The typed set of secret values of an environment.

The encrypted file holds the JSON of SecretsModel. A file that does not match is refused with
the missing or wrong key named. Which component reads which value is declared in
rave/components.py (Component.secrets); tests check both stay in step.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PASSWORD_MIN = 16
# htpasswd lines nginx accepts: apr1 (openssl passwd -apr1) or bcrypt ($2y$)
# restic's environment for its remote backends (restic's documentation, "Environment Variables");
# anything else in backup_repository_env is refused, named
RESTIC_BACKEND_ENV = frozenset(
    {
        # S3-compatible stores (s3:)
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_DEFAULT_REGION",
        # Backblaze B2 (b2:)
        "B2_ACCOUNT_ID",
        "B2_ACCOUNT_KEY",
        # Azure Blob Storage (azure:)
        "AZURE_ACCOUNT_NAME",
        "AZURE_ACCOUNT_KEY",
        "AZURE_ACCOUNT_SAS",
        "AZURE_ENDPOINT_SUFFIX",
        # Google Cloud Storage (gs:)
        "GOOGLE_PROJECT_ID",
        "GOOGLE_ACCESS_TOKEN",
        # OpenStack Swift (swift:)
        "ST_AUTH",
        "ST_USER",
        "ST_KEY",
        "OS_AUTH_URL",
        "OS_REGION_NAME",
        "OS_USERNAME",
        "OS_USER_ID",
        "OS_PASSWORD",
        "OS_TENANT_ID",
        "OS_TENANT_NAME",
        "OS_USER_DOMAIN_NAME",
        "OS_USER_DOMAIN_ID",
        "OS_PROJECT_NAME",
        "OS_PROJECT_DOMAIN_NAME",
        "OS_PROJECT_DOMAIN_ID",
        "OS_TRUST_ID",
        "OS_APPLICATION_CREDENTIAL_ID",
        "OS_APPLICATION_CREDENTIAL_NAME",
        "OS_APPLICATION_CREDENTIAL_SECRET",
        "OS_STORAGE_URL",
        "OS_AUTH_TOKEN",
        # REST server (rest:)
        "RESTIC_REST_USERNAME",
        "RESTIC_REST_PASSWORD",
    }
)
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
    # optional: a provider whose list is empty is not enabled on the receiver
    webhook_standard_secrets: list[str] = Field(
        default_factory=list,
        max_length=4,
        description="Standard Webhooks signing secrets (whsec_...), newest first; empty: off",
    )
    webhook_gitlab_tokens: list[str] = Field(
        default_factory=list,
        max_length=4,
        description="GitLab X-Gitlab-Token values; empty: GitLab deliveries are refused",
    )
    postgres_webhook_password: str = Field(description="PostgreSQL role of the webhook")
    postgres_exporter_password: str = Field(description="PostgreSQL role of postgres_exporter")
    grafana_admin_password: str = Field(description="Grafana's admin user")
    alertmanager_receivers: list[AlertReceiver] = Field(
        min_length=1, description="Alertmanager receivers with their credentials"
    )
    backup_repository_password: str = Field(description="encryption password of the backups")
    # optional: set by `rotate backup_repository_password` (the deploy then moves the
    # repository's restic key from it to the new password), cleared by `rotate --retire-old`
    backup_repository_previous_password: str = Field(
        "",
        description="the password before the last rotation, until the repository was moved to "
        "the new one (restic key add, then key remove of the old key; empty: no rotation pending)",
    )
    # optional so that a file written before pgBackRest still decrypts; the deploy refuses a
    # host whose PostgreSQL backups need it while it is empty (rave/validation.py)
    backup_pgbackrest_cipher_password: str = Field(
        "",
        description="pgBackRest's repository cipher pass (repo1-cipher-type aes-256-cbc); "
        "fixed for the life of the repository (pgBackRest cannot re-key one)",
    )
    # optional: only a pgBackRest s3 repository (backup_pgbackrest_repo_type) needs them
    backup_pgbackrest_s3_key: str = Field(
        "", description="pgBackRest s3 repository: access key id (repo1-s3-key)"
    )
    backup_pgbackrest_s3_key_secret: str = Field(
        "", description="pgBackRest s3 repository: secret access key (repo1-s3-key-secret)"
    )
    # optional (a local repository needs none): files that lack them still decrypt and install
    backup_repository_env: dict[str, str] = Field(
        default_factory=dict,
        description="restic's environment for a remote repository, e.g. AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY for s3: (only the names restic documents for its backends)",
    )
    backup_sftp_private_key: str = Field(
        "", description="OpenSSH private key (no passphrase) of an sftp: repository's login"
    )
    backup_sftp_known_hosts: str = Field(
        "", description="known_hosts line(s) of an sftp: repository's server (pinned)"
    )
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

    @field_validator("webhook_hmac_secrets", "webhook_standard_secrets", "webhook_gitlab_tokens")
    @classmethod
    def _hmac(cls, values: list[str]) -> list[str]:
        for value in values:
            if len(value) < 32:
                raise ValueError("every webhook HMAC secret must be at least 32 characters")
            _password(value, "a webhook HMAC secret")
        if len(set(values)) != len(values):
            raise ValueError("duplicate webhook HMAC secret")
        return values

    @model_validator(mode="after")
    def _providers_disjoint(self) -> SecretsModel:
        # a GitHub or Standard Webhooks secret must never also work as a GitLab token
        seen: dict[str, str] = {}
        for name in ("webhook_hmac_secrets", "webhook_standard_secrets", "webhook_gitlab_tokens"):
            for value in getattr(self, name):
                if seen.setdefault(value, name) != name:
                    raise ValueError(f"a value of {name} is also in {seen[value]}")
        return self

    @field_validator(
        "postgres_webhook_password",
        "postgres_exporter_password",
        "grafana_admin_password",
        "backup_repository_password",
    )
    @classmethod
    def _passwords(cls, value: str) -> str:
        return _password(value, "password")

    @field_validator("backup_repository_previous_password", "backup_pgbackrest_cipher_password")
    @classmethod
    def _previous_password(cls, value: str) -> str:
        return _password(value, "password") if value else value

    @field_validator("backup_pgbackrest_s3_key", "backup_pgbackrest_s3_key_secret")
    @classmethod
    def _s3_key(cls, value: str) -> str:
        if value and (value != value.strip() or any(c in value for c in "\n\0")):
            raise ValueError("must be one line without surrounding spaces")
        return value

    @field_validator("backup_repository_env")
    @classmethod
    def _restic_env(cls, env: dict[str, str]) -> dict[str, str]:
        for name, value in env.items():
            if name not in RESTIC_BACKEND_ENV:
                raise ValueError(
                    f"{name} is not an environment variable restic documents for its backends "
                    f"(known: {', '.join(sorted(RESTIC_BACKEND_ENV))})"
                )
            if not value or "\n" in value or "\0" in value:
                raise ValueError(f"{name} must be one non-empty line")
        return env

    @field_validator("backup_sftp_private_key")
    @classmethod
    def _ssh_key(cls, value: str) -> str:
        if not value:
            return value
        if "-----BEGIN OPENSSH PRIVATE KEY-----" not in value:
            raise ValueError("not an OpenSSH private key (-----BEGIN OPENSSH PRIVATE KEY-----)")
        return value if value.endswith("\n") else value + "\n"

    @field_validator("backup_sftp_known_hosts")
    @classmethod
    def _known_hosts(cls, value: str) -> str:
        lines = [line for line in value.splitlines() if line.strip()]
        for line in lines:
            if len(line.split()) < 3:
                raise ValueError(f"not a known_hosts line 'host keytype key': {line[:40]!r}")
        return "".join(line + "\n" for line in lines)

    @field_validator("ccr_ui_password_hash")
    @classmethod
    def _htpasswd(cls, value: str) -> str:
        value = value.strip()
        if not HTPASSWD_LINE.match(value):
            raise ValueError("not an htpasswd line 'user:$apr1$salt$hash' or 'user:$2y$...'")
        return value


SECRET_NAMES: tuple[str, ...] = tuple(SecretsModel.model_fields)


def is_optional(name: str) -> bool:
    return not SecretsModel.model_fields[name].is_required()


def default_file_content(name: str) -> str:
    """The file an optional secret gets on a host whose encrypted file lacks it."""
    field = SecretsModel.model_fields[name]
    value = field.get_default(call_default_factory=True)
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def is_set(model: SecretsModel, name: str) -> bool:
    """Does an optional secret hold a value (not its default)?"""
    return bool(
        getattr(model, name)
        != SecretsModel.model_fields[name].get_default(call_default_factory=True)
    )


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
