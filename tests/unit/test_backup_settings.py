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
    [
        ("backup_wal_archive_timeout_sec", 10),
        ("backup_pgbackrest_full_interval_days", 0),
        ("backup_pgbackrest_retention_full", 0),
        ("backup_pgbackrest_repo_type", "sftp"),  # not in Debian's pgBackRest 2.45
        ("backup_pgbackrest_repo_path", "relative/path"),
    ],
)
def test_wal_settings_are_bounded(field, value):
    with pytest.raises(ValidationError, match=field):
        make_settings(**{field: value})


# the sftp repository's user and host reach ssh's command line on the host (issue 17)
SFTP_FORMS = ("sftp:{user}@{host}:/srv/rave", "sftp://{user}@{host}:2222//srv/rave")


@pytest.mark.parametrize(
    "repository",
    [
        "sftp:backup.example.org:/srv/rave",
        "sftp:backup@backup.example.org:/srv/rave",
        "sftp:rave_backup-1@b-1.example.org:/srv/rave",
        "sftp:backup@10.0.0.5:/srv/rave",
        "sftp://backup@10.0.0.5:2222//srv/rave",
        "sftp://host7/srv/rave",
        "sftp:u@" + ".".join(["a" * 63] * 3) + ":/r",
    ],
)
def test_sftp_repositories_with_a_host_name_or_address_are_accepted(repository):
    assert make_settings(backup_repository=repository).backup_repository == repository


@pytest.mark.parametrize(
    "repository",
    [
        "sftp:-oProxyCommand=touch${IFS}/tmp/pwned:/srv/rave",
        "sftp:backup@-oProxyCommand=sh:/srv/rave",
        "sftp://-oProxyCommand=sh/srv/rave",
        "sftp://backup@-p22:22//srv/rave",
        "sftp:-lroot@host:/srv/rave",
        "sftp:backup@host;id:/srv/rave",
        "sftp:backup@$(id):/srv/rave",
        "sftp:backup@`id`:/srv/rave",
        "sftp:backup@host|id:/srv/rave",
        "sftp:backup@host'x:/srv/rave",
        "sftp:backup@-host:/srv/rave",
        "sftp:backup@host-:/srv/rave",
        "sftp:backup@a..b:/srv/rave",
        "sftp:backup@.host:/srv/rave",
        "sftp:backup@999.1.1.1:/srv/rave",
        "sftp:backup@:/srv/rave",
        "sftp:@host:/srv/rave",
        "sftp:ba%ckup@host:/srv/rave",
        "sftp:backup@" + "a" * 64 + ".org:/srv/rave",
        "sftp://backup@host:0//srv/rave",
        "sftp://backup@host:65536//srv/rave",
        "sftp://backup@host:2x//srv/rave",
        "sftp:backup@host",
    ],
)
def test_sftp_repositories_with_anything_but_a_plain_user_and_host_are_refused(repository):
    with pytest.raises(ValidationError) as error:
        make_settings(backup_repository=repository)
    assert "backup_repository" in str(error.value)


@pytest.mark.parametrize(("form", "separator"), list(zip(SFTP_FORMS, (":", "/"), strict=True)))
def test_every_shell_or_ssh_option_character_in_the_sftp_host_or_user_is_refused(form, separator):
    """Each printable ASCII character other than letters, digits, '.' and '_', and whitespace,
    at the start, inside and at the end of the user and of the host. ('-' is refused only at
    the start; the form's own separator inside a name just ends it: "sftp:a:b@h:/p" is host
    "a", path "b@h:/p", for restic as for the script.)"""
    specials = [c for c in map(chr, range(32, 127)) if not c.isalnum() and c not in "._-"]
    for char in [*specials, "\t", "\n", "\r", "\x00", "-"]:
        hosts = [f"{char}host"]
        users = [f"{char}user"]
        if char not in ("-", separator):
            hosts += [f"ho{char}st", f"host{char}"]
            users += [f"us{char}er"]
        for host in hosts:
            with pytest.raises(ValidationError, match="backup_repository"):
                make_settings(backup_repository=form.format(user="backup", host=host))
        for user in users:
            with pytest.raises(ValidationError, match="backup_repository"):
                make_settings(backup_repository=form.format(user=user, host="backup.example"))


S3 = {
    "backup_pgbackrest_repo_type": "s3",
    "backup_pgbackrest_s3_endpoint": "s3.eu-central-1.amazonaws.com",
    "backup_pgbackrest_s3_bucket": "rave-pgbackrest",
    "backup_pgbackrest_s3_region": "eu-central-1",
}


@pytest.mark.parametrize("missing", ["endpoint", "bucket", "region"])
def test_an_s3_pgbackrest_repository_names_what_it_lacks(missing):
    data = {k: v for k, v in S3.items() if k != f"backup_pgbackrest_s3_{missing}"}
    with pytest.raises(ValidationError, match=f"backup_pgbackrest_s3_{missing}"):
        make_settings(**data)


@pytest.mark.parametrize(
    "field, value",
    [
        # each would end the line of pgbackrest.conf and start an option of its own
        ("backup_pgbackrest_s3_endpoint", "s3.example.org\nrepo1-path=/tmp"),
        ("backup_pgbackrest_s3_endpoint", "https://s3.example.org"),
        ("backup_pgbackrest_s3_bucket", "Bucket_With_Capitals"),
        ("backup_pgbackrest_s3_bucket", "b\nrepo1-s3-verify-tls=n"),
        ("backup_pgbackrest_s3_region", "eu central"),
        ("backup_pgbackrest_s3_uri_style", "virtual"),
    ],
)
def test_s3_settings_cannot_inject_options(field, value):
    with pytest.raises(ValidationError, match=field):
        make_settings(**{**S3, field: value})
