"""age encryption with real keys: recipients decrypt, anyone else cannot."""

import subprocess

import pytest

from rave.secrets import crypto
from tests.tools import require_tool

PLAINTEXT = b'{"value": "not-a-real-secret-0123456789"}\n'


@pytest.fixture
def team(tmp_path):
    secret, public = crypto.generate_identity()
    path = tmp_path / "team.txt"
    path.write_text(crypto.identity_text(secret, public, "test"))
    return path, public


@pytest.fixture
def host_key(tmp_path):
    path = tmp_path / "ssh_host_ed25519_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "root@h", "-f", str(path)],
        check=True,
    )
    return path, (tmp_path / "ssh_host_ed25519_key.pub").read_text().strip()


def test_round_trip_for_a_team_key_and_a_host_key(team, host_key):
    team_path, team_public = team
    key_path, key_public = host_key
    armored = crypto.encrypt(PLAINTEXT, [team_public, key_public])
    assert armored.startswith(crypto.ARMOR_BEGIN)
    assert b"not-a-real-secret" not in armored.encode()
    assert crypto.decrypt(armored, crypto.load_identities(team_path)) == PLAINTEXT
    assert crypto.decrypt(armored, crypto.load_identities(key_path)) == PLAINTEXT


def test_debian_age_decrypts_with_the_host_key_as_the_host_does(team, host_key):
    age = require_tool("age")
    key_path, key_public = host_key
    armored = crypto.encrypt(PLAINTEXT, [team[1], key_public])
    result = subprocess.run(
        [age, "--decrypt", "--identity", str(key_path)],
        input=armored.encode(),
        capture_output=True,
        check=True,
    )
    assert result.stdout == PLAINTEXT


def test_a_non_recipient_cannot_decrypt(team, host_key, tmp_path):
    armored = crypto.encrypt(PLAINTEXT, [team[1]])
    other_secret, other_public = crypto.generate_identity()
    other = tmp_path / "other.txt"
    other.write_text(crypto.identity_text(other_secret, other_public, "other"))
    with pytest.raises(crypto.CryptoError, match="is a recipient"):
        crypto.decrypt(armored, crypto.load_identities(other))
    with pytest.raises(crypto.CryptoError):
        crypto.decrypt(armored, crypto.load_identities(host_key[0]))


def test_the_header_names_the_ssh_recipients_by_tag(team, host_key, tmp_path):
    armored = crypto.encrypt(PLAINTEXT, [team[1], host_key[1]])
    assert crypto.ssh_tags_in(armored) == {crypto.ssh_key_tag(host_key[1])}
    assert crypto.ssh_tags_in(crypto.encrypt(PLAINTEXT, [team[1]])) == set()


@pytest.mark.parametrize("key", ["ssh-rsa AAAAB3NzaC1yc2E", "age1notakey", "", "hello"])
def test_bad_recipients_are_refused(key):
    with pytest.raises(crypto.CryptoError):
        crypto.normalize_key(key) if key else crypto.normalize_key(" ")


def test_no_recipient_is_refused():
    with pytest.raises(crypto.CryptoError, match="no recipients"):
        crypto.encrypt(PLAINTEXT, [])
