"""The secrets model: every declared secret exists, and a wrong or missing key is named."""

import json

import pytest

from rave.components import COMPONENTS
from rave.secrets import generate
from rave.secrets.deploy import check_declarations, secret_path
from rave.secrets.model import SECRET_NAMES, SecretsFormatError, file_content, from_json, to_json
from rave.secrets.staging import generated_values

COMMON_NAMES = {
    "tls_certificate",
    "tls_private_key",
    "webhook_hmac_secrets",
    "postgres_webhook_password",
    "postgres_exporter_password",
    "grafana_admin_password",
    "alertmanager_receivers",
    "backup_repository_password",
    "ccr_api_keys",
    "ccr_ui_password_hash",
    # optional: a remote backup repository's credentials (issue 7)
    "backup_repository_env",
    "backup_sftp_private_key",
    "backup_sftp_known_hosts",
    # optional: each webhook provider its own secrets (issue 16)
    "webhook_standard_secrets",
    "webhook_gitlab_tokens",
    # optional: the backup password before a rotation, until retired (issue 17)
    "backup_repository_previous_password",
    # optional: pgBackRest's repository cipher pass (issue 21)
    "backup_pgbackrest_cipher_password",
    # optional: the key pair of a pgBackRest s3 repository (issue 21)
    "backup_pgbackrest_s3_key",
    "backup_pgbackrest_s3_key_secret",
}


@pytest.fixture(scope="module")
def values():
    return generated_values(["rave-test-1", "10.0.0.1"])


def test_the_model_holds_the_agreed_names():
    assert set(SECRET_NAMES) >= COMMON_NAMES


def test_components_read_only_declared_secrets_and_have_users():
    assert check_declarations() == []
    declared = {name for c in COMPONENTS for name in c.secrets}
    assert declared <= COMMON_NAMES


def test_secret_path():
    assert (
        secret_path("webhook", "webhook_hmac_secrets")
        == "/run/rave/secrets/webhook/webhook_hmac_secrets"
    )
    with pytest.raises(KeyError, match="does not declare"):
        secret_path("webhook", "tls_private_key")
    with pytest.raises(KeyError, match="unknown component"):
        secret_path("nope", "tls_private_key")


def test_generated_values_round_trip_through_json(values):
    assert from_json(to_json(values)) == values
    assert json.loads(file_content(values, "webhook_hmac_secrets")) == values.webhook_hmac_secrets
    assert file_content(values, "tls_private_key").startswith("-----BEGIN PRIVATE KEY-----")
    assert set(generate.certificate_names(values.tls_certificate)) == {"rave-test-1", "10.0.0.1"}


def _broken(values, **changes):
    data = values.model_dump(mode="json")
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    return json.dumps(data)


@pytest.mark.parametrize(
    ("changes", "named", "message"),
    [
        ({"postgres_webhook_password": None}, "postgres_webhook_password", "missing"),
        ({"webhook_hmac_secret": "x" * 40}, "webhook_hmac_secret", "unknown key"),
        ({"grafana_admin_password": "short"}, "grafana_admin_password", "at least 16"),
        ({"tls_certificate": "not a cert"}, "tls_certificate", "PEM certificate"),
        ({"tls_private_key": "-----BEGIN CERTIFICATE-----"}, "tls_private_key", "PEM private"),
        ({"webhook_hmac_secrets": []}, "webhook_hmac_secrets", "at least 1"),
        ({"webhook_hmac_secrets": ["a" * 10]}, "webhook_hmac_secrets", "at least 32"),
        ({"ccr_ui_password_hash": "rave:plain"}, "ccr_ui_password_hash", "htpasswd"),
        ({"ccr_api_keys": ["k"]}, "ccr_api_keys", "dictionary"),
        (
            {"alertmanager_receivers": [{"name": "x", "url": "http://a"}]},
            "alertmanager_receivers.0.url",
            "unknown key",
        ),
    ],
)
def test_a_file_not_matching_the_model_is_refused_with_the_key_named(
    values, changes, named, message
):
    with pytest.raises(SecretsFormatError) as error:
        from_json(_broken(values, **changes), "staging.age")
    text = str(error.value)
    assert f"- {named}: " in text
    assert message in text
    assert "staging.age" in text


def test_errors_never_echo_a_secret_value(values):
    secret = "S" * 15  # one short: refused
    with pytest.raises(SecretsFormatError) as error:
        from_json(_broken(values, postgres_exporter_password=secret))
    assert secret not in str(error.value)


def test_htpasswd_line_is_apr1_and_verifies(values):
    user, hashed = values.ccr_ui_password_hash.split(":", 1)
    assert user == generate.CCR_UI_USER
    assert hashed.startswith("$apr1$")
    salt = hashed.split("$")[2]
    import subprocess

    again = subprocess.run(
        ["openssl", "passwd", "-apr1", "-salt", salt, "-stdin"],
        input=values.ccr_ui_password.encode(),
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert again.strip() == hashed


def test_restic_env_names_are_checked_against_restics_backend_variables(values):
    data = json.loads(to_json(values))
    data["backup_repository_env"] = {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "k"}
    assert from_json(json.dumps(data)).backup_repository_env["AWS_ACCESS_KEY_ID"] == "id"
    data["backup_repository_env"] = {"AWS_ACCESS_KEY": "id"}
    with pytest.raises(SecretsFormatError, match="AWS_ACCESS_KEY is not an environment variable"):
        from_json(json.dumps(data))
    data["backup_repository_env"] = {"AWS_DEFAULT_REGION": "a\nb"}
    with pytest.raises(SecretsFormatError, match="AWS_DEFAULT_REGION must be one non-empty line"):
        from_json(json.dumps(data))


def test_sftp_key_and_known_hosts_are_checked(values):
    data = json.loads(to_json(values))
    data["backup_sftp_private_key"] = "-----BEGIN RSA PRIVATE KEY-----\nx\n"
    with pytest.raises(SecretsFormatError, match=r"backup_sftp_private_key: .*OpenSSH"):
        from_json(json.dumps(data))
    data["backup_sftp_private_key"] = "-----BEGIN OPENSSH PRIVATE KEY-----\nx"
    data["backup_sftp_known_hosts"] = "backup.example.org ssh-ed25519"
    with pytest.raises(SecretsFormatError, match=r"backup_sftp_known_hosts: .*known_hosts line"):
        from_json(json.dumps(data))
    data["backup_sftp_known_hosts"] = "backup.example.org ssh-ed25519 AAAAC3Nz"
    model = from_json(json.dumps(data))
    assert model.backup_sftp_private_key.endswith("x\n")
    assert model.backup_sftp_known_hosts == "backup.example.org ssh-ed25519 AAAAC3Nz\n"


def test_a_file_without_the_optional_secrets_still_parses(values):
    data = json.loads(to_json(values))
    for name in ("backup_repository_env", "backup_sftp_private_key", "backup_sftp_known_hosts"):
        del data[name]
    model = from_json(json.dumps(data))
    assert model.backup_repository_env == {}
    assert model.backup_sftp_private_key == ""


def test_no_webhook_secret_serves_two_providers() -> None:
    data = generated_values(["h1"]).model_dump(mode="json")
    data["webhook_gitlab_tokens"] = [data["webhook_hmac_secrets"][0]]
    with pytest.raises(SecretsFormatError, match=r"webhook_gitlab_tokens.*webhook_hmac_secrets"):
        from_json(json.dumps(data))
