"""Backup settings: defaults, validation of repository, schedules, paths and ops parameters."""

import pytest
from pydantic import ValidationError

from tests.unit.conftest import make_settings


def test_defaults_are_a_local_repository_with_retention_and_prometheus_excluded():
    s = make_settings()
    assert s.backup_repository.startswith("/")
    assert (s.backup_keep_hourly, s.backup_keep_daily) == (24, 7)
    assert (s.backup_keep_weekly, s.backup_keep_monthly) == (4, 6)
    assert "/var/lib/prometheus" in s.backup_exclude
    assert s.backup_randomized_delay_sec > 0
    assert s.backup_snapshot == "latest"
    assert s.backup_restore_confirm is False


@pytest.mark.parametrize(
    "repository",
    [
        "/srv/restic",
        "sftp:backup@backup.example.org:/srv/restic/rave",
        "s3:https://s3.example.org/bucket/rave",
        "rest:https://backup.example.org:8000/rave",
    ],
)
def test_accepted_repositories(repository):
    assert make_settings(backup_repository=repository).backup_repository == repository


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("backup_repository", "relative/path"),
        ("backup_repository", "ftp://example.org/x"),
        ("backup_repository", "/path with space"),
        ("backup_keep_daily", -1),
        ("backup_schedule", "hourly; rm -rf /"),
        ("backup_include_extra", ["relative"]),
        ("backup_snapshot", "../../etc"),
        ("backup_restore_scope", "everything"),
        ("backup_password_file", "wrong"),
        ("backup_retention", 3),  # a typo: unknown setting
    ],
)
def test_refused_values(field, value):
    with pytest.raises(ValidationError) as error:
        make_settings(**{field: value})
    assert field in str(error.value)


def test_ops_parameters_validate():
    s = make_settings(
        backup_snapshot="0123abcd",
        backup_restore_scope="host",
        backup_restore_confirm=True,
        backup_verify_strict_live=True,
    )
    assert (s.backup_snapshot, s.backup_restore_scope) == ("0123abcd", "host")


def test_restore_target_time_needs_a_zone_and_is_normalised():
    s = make_settings(backup_restore_target_time="2026-12-06T15:04:05Z")
    assert s.backup_restore_target_time == "2026-12-06T15:04:05+00:00"
    assert make_settings().backup_restore_target_time is None
    with pytest.raises(ValidationError, match="backup_restore_target_time"):
        make_settings(backup_restore_target_time="2026-12-06 15:04:05")
    with pytest.raises(ValidationError, match="not an ISO 8601 time"):
        make_settings(backup_restore_target_time="yesterday")


@pytest.mark.parametrize(
    "field, value",
    [("backup_wal_archive_timeout_sec", 10), ("backup_base_interval_hours", 0)],
)
def test_wal_settings_are_bounded(field, value):
    with pytest.raises(ValidationError, match=field):
        make_settings(**{field: value})
