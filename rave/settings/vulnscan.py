"""Settings of the vulnerability-scanning concern (tasks/vulnscan.py, docs/vulnscan.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from rave.settings.base import Concern

REPO_ROOT = Path(__file__).resolve().parents[2]
DEBIAN_TRACKER_JSON = "https://security-tracker.debian.org/tracker/data/json"


class VulnscanSettings(Concern):
    vulnscan_enabled: bool = Field(True, description="run the daily vulnerability scan")
    vulnscan_source: Literal["debian-tracker", "trivy"] = Field(
        "debian-tracker",
        description="debian-tracker: match dpkg against the Debian Security Tracker's JSON; "
        "trivy: install Trivy from Aqua's signed APT repository and run `trivy rootfs`",
    )
    vulnscan_data_url: str = Field(
        DEBIAN_TRACKER_JSON,
        pattern=r"^https?://[^\s]+$",
        description="where the tracker JSON is fetched (through egress_proxy)",
    )
    vulnscan_data_file: str | None = Field(
        None,
        pattern=r"^/[^\s]*$",
        description="a file ON THE HOST in the tracker's JSON format, used instead of "
        "vulnscan_data_url (an offline mirror)",
    )
    vulnscan_data_upload: str | None = Field(
        None,
        description="a tracker-format JSON file on the CONTROL machine (relative to the "
        "repository) that the deploy copies to vulnscan_data_file: an offline mirror; staging "
        "uses a labelled sample since it reaches no vulnerability database",
    )
    vulnscan_npm_audit_upload: str | None = Field(
        None,
        description="`npm audit --json` output on the CONTROL machine (relative to the "
        "repository) that the scan reads instead of asking the npm registry; the packages are "
        "still counted from each tree's package-lock.json. Staging only: its registry mirror "
        "refuses the audit endpoint (405)",
    )
    vulnscan_release: str = Field(
        "bookworm", pattern=r"^[a-z]+$", description="Debian release name in the tracker data"
    )
    vulnscan_schedule: str = Field(
        "daily", description="systemd OnCalendar= expression of the scan timer"
    )
    vulnscan_randomized_delay: str = Field(
        "4h",
        pattern=r"^[0-9]+(s|min|h)$",
        description="systemd RandomizedDelaySec= of the timer (spreads hosts over time)",
    )
    vulnscan_timeout_seconds: int = Field(
        600, ge=30, le=7200, description="download / scanner timeout; the unit gets twice this"
    )
    vulnscan_memory_max_mb: int = Field(
        384, ge=128, description="MemoryMax of the scan (the tracker JSON is ~70 MB)"
    )
    vulnscan_cpu_quota_percent: int = Field(
        50, gt=0, le=400, description="CPUQuota of the scan (it runs once a day)"
    )
    vulnscan_npm_trees: list[str] | None = Field(
        None,
        description="npm project directories (with package-lock.json) to `npm audit`; unset: "
        "the npm_tree of each component this host runs (rave/components.py: the Claude Code "
        "Router's when ccr_install), [] audits none; a missing one is reported as 'no npm tree', "
        "not skipped silently",
    )
    vulnscan_trivy_apt_url: str = Field(
        "https://aquasecurity.github.io/trivy-repo/deb",
        pattern=r"^https://[^\s]+$",
        description="Aqua's APT repository for the trivy package",
    )
    vulnscan_trivy_key_url: str = Field(
        "https://aquasecurity.github.io/trivy-repo/deb/public.key",
        pattern=r"^https://[^\s]+$",
        description="Aqua's APT signing key (armored)",
    )
    vulnscan_trivy_key_sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="sha256 of the signing key file, pinned by the operator; required for trivy",
    )
    vulnscan_trivy_db_repository: str | None = Field(
        None, description="OCI repository of the Trivy vulnerability DB (a mirror); none: default"
    )

    @model_validator(mode="after")
    def _upload_needs_a_destination(self) -> VulnscanSettings:
        if self.vulnscan_data_upload is not None:
            if self.vulnscan_data_file is None:
                raise ValueError("vulnscan_data_upload needs vulnscan_data_file (where it goes)")
            if not (REPO_ROOT / self.vulnscan_data_upload).is_file():
                raise ValueError(
                    f"vulnscan_data_upload: no file {self.vulnscan_data_upload} in the repository"
                )
        upload = self.vulnscan_npm_audit_upload
        if upload is not None and not (REPO_ROOT / upload).is_file():
            raise ValueError(f"vulnscan_npm_audit_upload: no file {upload} in the repository")
        return self

    @model_validator(mode="after")
    def _trivy_needs_a_pinned_key(self) -> VulnscanSettings:
        if self.vulnscan_source == "trivy":
            if self.vulnscan_trivy_key_sha256 is None:
                raise ValueError(
                    "vulnscan_source 'trivy' needs vulnscan_trivy_key_sha256 (the pinned sha256 "
                    "of Aqua's APT key)"
                )
            if self.vulnscan_data_file is not None:
                raise ValueError(
                    "vulnscan_data_file is the Debian tracker's format; with trivy use "
                    "vulnscan_trivy_db_repository"
                )
        return self
