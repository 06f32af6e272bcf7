"""Settings of the edge concern: nginx on the public TLS port, the webhook receiver, PostgreSQL."""

from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator

from rave.settings.base import Concern


class EdgeSettings(Concern):
    # --- nginx -------------------------------------------------------------------------------
    nginx_server_name: str = Field(
        "_", pattern=r"^[A-Za-z0-9_.-]+$", description="server_name of the TLS edge (_ = any)"
    )
    nginx_hsts_max_age: int = Field(
        63072000, ge=0, description="Strict-Transport-Security max-age in seconds (2 years)"
    )
    nginx_rate_limit_per_second: int = Field(
        50, ge=1, description="per-client request rate on the public port (limit_req)"
    )
    nginx_rate_limit_burst: int = Field(
        200, ge=0, description="requests a client may exceed the rate by before getting 429"
    )
    nginx_conn_limit_per_client: int = Field(
        50,
        ge=1,
        description="concurrent connections per client on the public port (limit_conn; 429)",
    )
    nginx_rate_limit_exempt: list[str] = Field(
        default_factory=list,
        description="client addresses/CIDRs without rate or connection limits (load generator)",
    )
    nginx_worker_connections: int = Field(
        1024, ge=64, description="nginx worker_connections per worker"
    )

    # --- webhook receiver --------------------------------------------------------------------
    webhook_max_body_bytes: int = Field(
        1_048_576,
        ge=1024,
        le=26_214_400,
        description="largest webhook body accepted (nginx client_max_body_size and the app): 413",
    )
    webhook_standard_webhooks: bool = Field(
        True,
        description="accept Standard Webhooks signatures (webhook-signature) with the secrets "
        "in webhook_standard_secrets (none installed: refused)",
    )
    webhook_gitlab: bool = Field(
        False,
        description="accept GitLab deliveries (X-Gitlab-Token) with the tokens in "
        "webhook_gitlab_tokens; off unless set",
    )
    webhook_timestamp_tolerance_seconds: int = Field(
        300, ge=10, description="Standard Webhooks: accepted clock skew of webhook-timestamp"
    )
    webhook_spool_segment_bytes: int = Field(
        8 * 1_048_576, ge=65536, description="spool segment size before the receiver rotates"
    )
    webhook_spool_max_bytes: int = Field(
        1024 * 1_048_576,
        ge=1_048_576,
        description="undrained spool above which the receiver answers 503 (PostgreSQL long down)",
    )
    webhook_drain_batch: int = Field(
        500, ge=1, le=10000, description="events per PostgreSQL transaction when draining"
    )
    webhook_http_impl: str = Field(
        "httptools",
        pattern=r"^(h11|httptools)$",
        description="uvicorn HTTP parser (httptools: Debian python3-httptools, much less CPU)",
    )

    # --- PostgreSQL --------------------------------------------------------------------------
    postgres_version: str = Field("15", pattern=r"^[0-9]+$", description="Debian's major version")
    postgres_work_mem_mb: int = Field(4, ge=1, description="work_mem per sort/hash")
    postgres_log_min_duration_ms: int = Field(
        500, ge=-1, description="log statements slower than this (-1: off)"
    )

    @field_validator("nginx_rate_limit_exempt")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        for value in values:
            ipaddress.ip_network(value, strict=False)
        return values
