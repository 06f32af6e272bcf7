import json

import pytest
from pydantic import ValidationError

from rave.components import COMPONENTS
from rave.modes import PROFILES, Mode
from rave.validation import DataLayer, HostDataError, validate_host
from tests.unit.conftest import SAMPLE_KEY, make_settings


def test_defaults_validate_and_pick_the_safe_profile():
    config = make_settings()
    assert config.rave_mode is Mode.SAFE
    assert config.profile is PROFILES[Mode.SAFE]


def test_full_pipe_is_chosen_by_one_setting():
    config = make_settings(rave_mode="FULL_PIPE")
    assert config.profile.prometheus_retention_time == "7d"
    assert config.profile.limits_for("prometheus").memory_max_mb == 512


@pytest.mark.parametrize("mode", list(Mode))
def test_each_profile_limits_every_service_component(mode):
    profile = PROFILES[mode]
    limited = {c.name for c in COMPONENTS if c.name != "sshd"}
    assert limited <= set(profile.limits), limited - set(profile.limits)


def test_safe_fits_a_two_gigabyte_host():
    total = sum(limit.memory_max_mb for limit in PROFILES[Mode.SAFE].limits.values())
    assert total < 2048


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("rave_mode", "FAST", "rave_mode"),
        ("timezone", "Mars/Olympus", "unknown time zone"),
        ("egress_proxy", "proxy:3128", "egress_proxy"),
        ("operator_keys", [], "operator-keys"),  # the error says where keys are listed
        ("operator_keys", ["ssh-rsa AAAAB3Nza"], "not an ssh-ed25519"),
        ("hostname", "Bad_Name", "hostname"),
    ],
)
def test_bad_values_are_refused_with_the_field_named(field, value, fragment):
    with pytest.raises(ValidationError) as error:
        make_settings(**{field: value})
    assert fragment in str(error.value)


def test_unknown_setting_names_host_field_and_file():
    layers = [
        DataLayer("inventories/x.py (host h1)", {"ssh_user": "agent", "_sudo": True}),
        DataLayer("group_data/all.py", {"webhok_port": 1, "operator_keys": [SAMPLE_KEY]}),
    ]
    with pytest.raises(HostDataError) as error:
        validate_host("h1", layers)
    message = str(error.value)
    assert "host h1" in message
    assert "webhok_port" in message
    assert "group_data/all.py" in message
    assert "unknown setting" in message


def test_more_specific_layer_wins_and_connector_keys_pass_through():
    layers = [
        DataLayer("inventory (host h1)", {"rave_mode": "FULL_PIPE", "ssh_port": 2222}),
        DataLayer("group_data/all.py", {"rave_mode": "SAFE", "operator_keys": [SAMPLE_KEY]}),
    ]
    assert validate_host("h1", layers).rave_mode is Mode.FULL_PIPE


def _remote_repository_layers(tmp_path, repository, present):
    from rave.secrets.store import Environment

    encrypted = tmp_path / "prod.age"
    env = Environment.for_host("prod", str(encrypted), None)
    encrypted.write_text("(stands in for the age file: only its public .present is read)\n")
    # pgBackRest's cipher pass is there: these tests are about restic's repository
    env.present_path.write_text(
        json.dumps({**(present or {}), "backup_pgbackrest_cipher_password": True})
    )
    data = {
        "operator_keys": [SAMPLE_KEY],
        "rave_environment": "prod",
        "secrets_file": str(encrypted),
        "backup_repository": repository,
        # these tests are about restic's repository (pgBackRest's: the tests at the end)
        "backup_wal_archiving": False,
    }
    return [DataLayer("group_data/prod.py", data)]


@pytest.mark.parametrize(
    ("repository", "present", "missing"),
    [
        ("s3:https://s3.example.org/bucket/rave", None, "backup_repository_env.AWS_ACCESS_KEY_ID"),
        (
            "s3:https://s3.example.org/bucket/rave",
            {"backup_repository_env": ["AWS_ACCESS_KEY_ID"]},
            "backup_repository_env.AWS_SECRET_ACCESS_KEY",
        ),
        ("sftp:backup@backup.example.org:/srv/rave", {}, "backup_sftp_private_key"),
        (
            "sftp:backup@backup.example.org:/srv/rave",
            {"backup_sftp_private_key": True},
            "backup_sftp_known_hosts",
        ),
    ],
)
def test_remote_repository_without_its_credentials_is_refused(
    tmp_path, repository, present, missing
):
    with pytest.raises(HostDataError) as error:
        validate_host("h1", _remote_repository_layers(tmp_path, repository, present))
    message = str(error.value)
    assert "backup_repository in group_data/prod.py" in message
    assert f"needs the secret {missing}" in message
    assert "rave-secrets edit --env prod" in message


@pytest.mark.parametrize(
    ("repository", "present"),
    [
        (
            "s3:https://s3.example.org/bucket/rave",
            {"backup_repository_env": ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]},
        ),
        (
            "sftp:backup@backup.example.org:/srv/rave",
            {"backup_sftp_private_key": True, "backup_sftp_known_hosts": True},
        ),
    ],
)
def test_remote_repository_with_its_credentials_validates(tmp_path, repository, present):
    settings = validate_host("h1", _remote_repository_layers(tmp_path, repository, present))
    assert settings.backup_repository == repository


def _local_repository_layers(tmp_path, **prod_data):
    layers = _remote_repository_layers(tmp_path, "/srv/restic", None)
    layers[0] = DataLayer("group_data/prod.py", {**layers[0].data, **prod_data})
    return layers


def test_production_refuses_a_repository_on_the_host_unacknowledged(tmp_path):
    with pytest.raises(HostDataError) as error:
        validate_host("h1", _local_repository_layers(tmp_path))
    message = str(error.value)
    assert "host h1: backup_repository in group_data/prod.py (/srv/restic)" in message
    assert "is not acknowledged" in message
    assert "backup_local_repository_acknowledged = True in group_data/prod.py" in message


def test_production_refuses_the_default_local_repository_too(tmp_path):
    layers = _local_repository_layers(tmp_path)
    data = {k: v for k, v in layers[0].data.items() if k != "backup_repository"}
    with pytest.raises(HostDataError) as error:
        validate_host("h1", [DataLayer("group_data/prod.py", data)])
    assert "backup_repository in defaults (no file sets it)" in str(error.value)
    acknowledged = {**data, "backup_local_repository_acknowledged": True}
    validate_host("h1", [DataLayer("group_data/prod.py", acknowledged)])


def test_production_accepts_a_local_repository_acknowledged_in_the_same_file(tmp_path):
    layers = _local_repository_layers(tmp_path, backup_local_repository_acknowledged=True)
    settings = validate_host("h1", layers)  # a local repository needs no credentials
    assert settings.backup_repository == "/srv/restic"


def test_the_acknowledgement_must_sit_next_to_the_repository(tmp_path):
    layers = _local_repository_layers(tmp_path)
    layers.append(DataLayer("group_data/all.py", {"backup_local_repository_acknowledged": True}))
    with pytest.raises(HostDataError) as error:
        validate_host("h1", layers)
    assert "acknowledged in group_data/all.py, not next to backup_repository" in str(error.value)


def test_staging_keeps_its_repository_on_the_host_unacknowledged(tmp_path):
    layers = _local_repository_layers(tmp_path, rave_environment="staging")
    assert validate_host("h1", layers).backup_repository == "/srv/restic"


def _pgbackrest_layers(tmp_path, present, **prod_data):
    layers = _remote_repository_layers(tmp_path, "s3:https://s3.example.org/b/r", None)
    env_present = {
        "backup_repository_env": ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
        **present,
    }
    (tmp_path / "prod.present").write_text(json.dumps(env_present))
    data = {k: v for k, v in layers[0].data.items() if k != "backup_wal_archiving"}
    return [DataLayer("group_data/prod.py", {**data, **prod_data})]


def test_production_refuses_a_pgbackrest_repository_on_the_host_unacknowledged(tmp_path):
    layers = _pgbackrest_layers(tmp_path, {"backup_pgbackrest_cipher_password": True})
    with pytest.raises(HostDataError) as error:
        validate_host("h1", layers)
    message = str(error.value)
    assert "backup_pgbackrest_repo_path in defaults (no file sets it)" in message
    assert "/var/backups/rave/pgbackrest" in message
    acknowledged = _pgbackrest_layers(
        tmp_path,
        {"backup_pgbackrest_cipher_password": True},
        backup_local_repository_acknowledged=True,
    )
    assert validate_host("h1", acknowledged).backup_pgbackrest_repo_type == "posix"


def test_pgbackrest_needs_its_cipher_pass_in_the_secrets(tmp_path):
    layers = _pgbackrest_layers(tmp_path, {}, backup_local_repository_acknowledged=True)
    with pytest.raises(HostDataError) as error:
        validate_host("h1", layers)
    message = str(error.value)
    assert "needs the secret backup_pgbackrest_cipher_password" in message
    assert "rave-secrets set backup_pgbackrest_cipher_password --env prod" in message
    off = _pgbackrest_layers(
        tmp_path, {}, backup_local_repository_acknowledged=True, backup_wal_archiving=False
    )
    assert validate_host("h1", off).backup_wal_archiving is False


S3 = {
    "backup_pgbackrest_repo_type": "s3",
    "backup_pgbackrest_s3_endpoint": "s3.eu-central-1.amazonaws.com",
    "backup_pgbackrest_s3_bucket": "rave-pgbackrest",
    "backup_pgbackrest_s3_region": "eu-central-1",
}


def test_an_s3_pgbackrest_repository_needs_its_key_pair_in_the_secrets(tmp_path):
    cipher = {"backup_pgbackrest_cipher_password": True}
    with pytest.raises(HostDataError) as error:
        validate_host("h1", _pgbackrest_layers(tmp_path, cipher, **S3))
    message = str(error.value)
    assert "needs the secret backup_pgbackrest_s3_key," in message
    assert "needs the secret backup_pgbackrest_s3_key_secret" in message
    keys = {**cipher, "backup_pgbackrest_s3_key": True, "backup_pgbackrest_s3_key_secret": True}
    # off the host: no acknowledgement asked for
    settings = validate_host("h1", _pgbackrest_layers(tmp_path, keys, **S3))
    assert settings.backup_pgbackrest_repo_type == "s3"
