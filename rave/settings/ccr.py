"""Settings of the Claude Code Router concern (@musistudio/claude-code-router on Node.js)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from rave.settings.base import Concern


class NodeSource(StrEnum):
    # Debian 12's nodejs (18.19): the default, from the host's signed Debian archive
    DEBIAN = "debian"
    # a NodeSource-style signed APT repository (newer Node, for CCR versions needing >= 20);
    # documented in docs/ccr.md, not used by the staging hosts (their egress is the proxy only)
    NODESOURCE = "nodesource"


class CcrProvider(BaseModel):
    """One upstream LLM provider; its API key is ccr_api_keys[name] in the secrets."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="provider name (secret key)")
    api_base_url: str = Field(pattern=r"^https://", description="chat completions URL")
    models: list[str] = Field(min_length=1, description="model names offered by the provider")
    transformer: list[str] = Field(
        default_factory=list, description="CCR transformers applied to every model (optional)"
    )


class CcrSettings(Concern):
    ccr_install: bool = Field(True, description="install and run Claude Code Router")
    ccr_version: str = Field(
        # newest release whose package.json accepts Node 18 (2.0.0 needs >= 20, 3.x >= 22)
        "1.0.73",
        pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$",
        description="pinned version of @musistudio/claude-code-router (npm)",
    )
    ccr_node_source: NodeSource = Field(
        NodeSource.DEBIAN,
        description="where Node.js comes from: debian (18.x) or nodesource (signed APT repo)",
    )
    ccr_providers: list[CcrProvider] = Field(
        default_factory=list, description="upstream providers (their keys: ccr_api_keys secret)"
    )
    ccr_default_route: str = Field(
        "",
        pattern=r"^$|^[A-Za-z0-9_.-]+,[A-Za-z0-9_.:/-]+$",
        description="Router.default as 'provider,model' (empty: none)",
    )
    ccr_api_timeout_ms: int = Field(
        600_000, ge=1000, description="CCR API_TIMEOUT_MS towards the providers"
    )
