"""Settings of the secrets concern."""

from __future__ import annotations

from pydantic import Field

from rave.settings.base import Concern


class SecretsSettings(Concern):
    secrets_file: str | None = Field(
        None,
        description="encrypted secrets of this host's environment; none: secrets/<env>.age "
        "(.staging/secrets/staging.age for staging), relative paths from the repo root",
    )
    secrets_recipients_file: str | None = Field(
        None,
        description="its recipients file; none: next to secrets_file as <env>.recipients",
    )
    secrets_deploy: bool = Field(
        True, description="ship the secrets and rave-secrets.service to this host"
    )
