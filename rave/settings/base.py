"""Settings every host needs: identity, mode, egress, service account."""

from __future__ import annotations

import functools

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator

from rave.modes import Mode

HOSTNAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


@functools.cache
def _available_timezones() -> frozenset[str]:
    """zoneinfo walks the tz database for every call (~20 ms; twice per host and run)."""
    import zoneinfo

    return frozenset(zoneinfo.available_timezones())


class Concern(BaseModel):
    """Base of every settings group: strict, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class BaseSettings(Concern):
    rave_environment: str = Field(
        "staging", pattern=r"^[a-z][a-z0-9-]*$", description="secrets environment this host reads"
    )
    rave_mode: Mode = Field(
        Mode.SAFE, description="resource profile: SAFE (2 GB) or FULL_PIPE (4 GB)"
    )
    hostname: str = Field(pattern=HOSTNAME_PATTERN, description="the host's short name")
    timezone: str = Field("UTC", description="an IANA zone name, e.g. Europe/Berlin")
    locale: str = Field("C.UTF-8", description="system locale")
    ntp_servers: list[str] = Field(
        default_factory=lambda: ["0.debian.pool.ntp.org", "1.debian.pool.ntp.org"],
        description="servers for systemd-timesyncd",
    )
    egress_proxy: str | None = Field(
        None,
        pattern=r"^https?://[^\s]+$",
        description="forward proxy for apt and npm (http://host:port); none means direct",
    )
    debian_mirror: HttpUrl = Field(
        HttpUrl("http://deb.debian.org/debian"),
        description="Debian archive for bookworm and bookworm-updates (debian.sources)",
    )
    debian_security_mirror: HttpUrl = Field(
        HttpUrl("https://security.debian.org/debian-security"),
        description="Debian security archive for bookworm-security (debian.sources)",
    )
    apt_security_lists_max_age_days: int = Field(
        2,
        ge=1,
        le=30,
        description="validation fails when apt's bookworm-security lists are older (days)",
    )
    apt_check_valid_until: bool = Field(
        True, description="false only for frozen snapshot mirrors (staging)"
    )
    base_packages: list[str] = Field(
        default_factory=lambda: [
            "ca-certificates",
            "curl",
            "less",
            "procps",
            "iproute2",
            "sudo",
            "systemd-timesyncd",
            "locales",
            "age",
        ],
        description="packages every host gets",
    )
    operator_user: str = Field(
        "agent", pattern=r"^[a-z_][a-z0-9_-]*$", description="the operators' SSH login (sudo)"
    )
    operator_keys: list[str] = Field(
        description="ssh-ed25519 public keys allowed to log in as operator_user; never empty",
    )
    service_user: str = Field(
        "rave", pattern=r"^[a-z_][a-z0-9_-]*$", description="unprivileged account for project files"
    )

    @field_validator("operator_keys")
    @classmethod
    def _ed25519_only(cls, keys: list[str]) -> list[str]:
        if not keys:
            raise ValueError(
                "no operator key: a host must never be left without one (list them one a line "
                "in secrets/<environment>.operator-keys, which group_data reads)"
            )
        for key in keys:
            parts = key.split()
            if len(parts) < 2 or parts[0] != "ssh-ed25519":
                raise ValueError(f"not an ssh-ed25519 public key: {key[:40]!r}")
        return keys

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        if value not in _available_timezones():
            raise ValueError(f"unknown time zone {value!r}")
        return value
