"""The environment files, the operators' CLI and the staging environment, with real age keys."""

import json
import os
import stat
import subprocess
import sys

import pytest

from rave.secrets import cli, crypto, generate
from rave.secrets.deploy import recipient_problem
from rave.secrets.staging import ensure_staging_environment
from rave.secrets.store import Environment, parse_recipients
from tests.tools import cannot_run_here


def _host_key(directory, name="ssh_host_ed25519_key"):
    path = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    public = (directory / f"{name}.pub").read_text().split()
    return path, f"{public[0]} {public[1]}"  # as the harness passes it (no comment)


@pytest.fixture
def staging(tmp_path):
    keys = {}
    paths = {}
    for index in (1, 2):
        path, public = _host_key(tmp_path, f"key{index}")
        keys[f"rave-staging-{index}"] = public
        paths[f"rave-staging-{index}"] = path
    state = tmp_path / "state"
    env = ensure_staging_environment(state, keys)
    return env, state, keys, paths


def run_cli(env, state, *args, stdin=None, capsys=None, monkeypatch=None):
    argv = [*args, "--env", "staging", "--dir", str(env.encrypted_path.parent)]
    argv += ["--identity", str(state / "age-identity.txt")]
    if stdin is not None and monkeypatch is not None:
        import io

        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    return cli.main(argv)


def test_staging_environment_is_created_for_team_and_hosts(staging):
    env, state, keys, paths = staging
    recipients = env.recipients()
    assert [(r.kind, r.name) for r in recipients] == [
        ("team", "staging-operator"),
        ("host", "rave-staging-1"),
        ("host", "rave-staging-2"),
    ]
    assert stat.S_IMODE(os.stat(state / "age-identity.txt").st_mode) == 0o600
    for name, key in keys.items():
        assert env.encrypted_to_host(key)
        host_view = env.decrypt(crypto.load_identities(paths[name]))
        assert host_view == env.decrypt(crypto.load_identities(state / "age-identity.txt"))


def test_staging_environment_is_idempotent_and_keeps_values(staging, tmp_path):
    env, state, keys, _ = staging
    team = crypto.load_identities(state / "age-identity.txt")
    before = env.encrypted_path.read_text(), env.decrypt(team)
    ensure_staging_environment(state, keys)
    assert env.encrypted_path.read_text() == before[0]  # not even re-encrypted

    _, third = _host_key(tmp_path, "key3")
    ensure_staging_environment(state, {**keys, "rave-staging-3": third})
    assert env.encrypted_to_host(third)
    after = env.decrypt(team)
    assert after.postgres_webhook_password == before[1].postgres_webhook_password
    # a new certificate that names the new host too; every generated value is kept
    names = generate.certificate_names(after.tls_certificate)
    assert {"rave-staging-1", "rave-staging-2", "rave-staging-3"} <= set(names)
    assert "rave-staging-3" not in generate.certificate_names(before[1].tls_certificate)
    assert after.tls_private_key != before[1].tls_private_key
    renewed = {"tls_certificate", "tls_private_key"}
    assert after.model_dump(exclude=renewed) == before[1].model_dump(exclude=renewed)


def test_recipients_file_is_age_compatible(staging):
    env, _, keys, _ = staging
    text = env.recipients_path.read_text()
    assert parse_recipients(text) == env.recipients()
    key_lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert key_lines[0].startswith("age1")
    assert key_lines[1] == f"{keys['rave-staging-1']} rave-staging-1"


def test_get_prints_one_value(staging, capsys):
    env, state, *_ = staging
    assert run_cli(env, state, "get", "postgres_webhook_password") == 0
    value = capsys.readouterr().out
    team = crypto.load_identities(state / "age-identity.txt")
    assert value == env.decrypt(team).postgres_webhook_password


def test_rotate_changes_only_that_secret_and_names_its_readers(staging, capsys):
    env, state, *_ = staging
    team = crypto.load_identities(state / "age-identity.txt")
    before, versions = env.decrypt(team), env.versions()
    assert run_cli(env, state, "rotate", "postgres_webhook_password") == 0
    out = capsys.readouterr().out
    after = env.decrypt(team)
    assert after.postgres_webhook_password != before.postgres_webhook_password
    assert after.model_copy(update={"postgres_webhook_password": "x"}) == before.model_copy(
        update={"postgres_webhook_password": "x"}
    )
    assert env.versions()["postgres_webhook_password"] == versions["postgres_webhook_password"] + 1
    assert env.versions()["grafana_admin_password"] == versions["grafana_admin_password"]
    assert "rave-webhook.service" in out and "postgresql@15-main.service" in out
    assert "nginx.service" not in out
    assert "pyinfra -y inventories/staging.py deploy.py" in out
    assert after.postgres_webhook_password not in out


def test_webhook_rotation_keeps_the_old_secret_until_retired(staging, capsys):
    env, state, *_ = staging
    team = crypto.load_identities(state / "age-identity.txt")
    old = env.decrypt(team).webhook_hmac_secrets
    assert run_cli(env, state, "rotate", "webhook_hmac_secrets") == 0
    during = env.decrypt(team).webhook_hmac_secrets
    assert len(during) == 2 and during[1] == old[0]
    assert run_cli(env, state, "rotate", "webhook_hmac_secrets", "--retire-old") == 0
    assert env.decrypt(team).webhook_hmac_secrets == during[:1]


def test_grafana_admin_password_is_not_rotated_and_the_message_says_how(staging, capsys):
    """Grafana reads it only when it creates its database: a generated value would change
    nothing on the host, so `rotate` refuses and names the host command and `set`."""
    env, state, *_ = staging
    team = crypto.load_identities(state / "age-identity.txt")
    before, versions = env.decrypt(team), env.versions()
    assert "grafana_admin_password" not in cli.ROTATABLE
    assert run_cli(env, state, "rotate", "grafana_admin_password") == 1
    err = capsys.readouterr().err
    assert "cannot be rotated" in err
    assert "grafana-cli admin reset-admin-password" in err
    assert "rave-secrets set grafana_admin_password --env staging" in err
    assert env.decrypt(team) == before and env.versions() == versions


def test_backup_password_rotation_keeps_the_previous_until_retired(staging, capsys):
    env, state, *_ = staging
    team = crypto.load_identities(state / "age-identity.txt")
    old = env.decrypt(team).backup_repository_password
    assert env.decrypt(team).backup_repository_previous_password == ""
    assert run_cli(env, state, "rotate", "backup_repository_password") == 0
    out = capsys.readouterr().out
    during = env.decrypt(team)
    assert during.backup_repository_previous_password == old
    assert during.backup_repository_password != old
    assert "--retire-old" in out and old not in out
    assert during.backup_repository_password not in out
    # a second rotation before the first was retired would lose the key that opens it
    assert run_cli(env, state, "rotate", "backup_repository_password") == 1
    assert "pending" in capsys.readouterr().err
    assert env.decrypt(team) == during
    assert run_cli(env, state, "rotate", "backup_repository_password", "--retire-old") == 0
    after = env.decrypt(team)
    assert after.backup_repository_previous_password == ""
    assert after.backup_repository_password == during.backup_repository_password
    assert run_cli(env, state, "rotate", "backup_repository_password") == 0


def test_retire_old_is_refused_for_secrets_without_a_previous_value(staging, capsys):
    env, state, *_ = staging
    team = crypto.load_identities(state / "age-identity.txt")
    assert run_cli(env, state, "rotate", "webhook_hmac_secrets") == 0
    before = env.decrypt(team)
    assert run_cli(env, state, "rotate", "postgres_webhook_password", "--retire-old") == 1
    assert "--retire-old is for" in capsys.readouterr().err
    assert env.decrypt(team) == before  # the webhook's previous secret stays


def test_tls_rotation_keeps_the_names(staging):
    env, state, *_ = staging
    team = crypto.load_identities(state / "age-identity.txt")
    before = env.decrypt(team)
    assert run_cli(env, state, "rotate", "tls_certificate") == 0
    after = env.decrypt(team)
    assert after.tls_private_key != before.tls_private_key
    from rave.secrets.generate import certificate_names

    assert certificate_names(after.tls_certificate) == certificate_names(before.tls_certificate)


def test_external_credentials_are_not_generated(staging, capsys):
    env, state, *_ = staging
    with pytest.raises(SystemExit):
        run_cli(env, state, "rotate", "ccr_api_keys")


def test_set_reads_stdin_and_validates(staging, capsys, monkeypatch):
    env, state, *_ = staging
    team = crypto.load_identities(state / "age-identity.txt")
    code = run_cli(
        env, state, "set", "ccr_api_keys", stdin='{"anthropic": "k-1"}', monkeypatch=monkeypatch
    )
    assert code == 0
    assert env.decrypt(team).ccr_api_keys == {"anthropic": "k-1"}
    code = run_cli(
        env, state, "set", "grafana_admin_password", stdin="short\n", monkeypatch=monkeypatch
    )
    assert code == 1
    assert "grafana_admin_password" in capsys.readouterr().err


def test_removing_a_host_re_encrypts_without_it(staging, capsys):
    env, state, keys, paths = staging
    assert run_cli(env, state, "recipients", "remove", "--host", "rave-staging-2") == 0
    assert not env.encrypted_to_host(keys["rave-staging-2"])
    with pytest.raises(crypto.CryptoError):
        env.decrypt(crypto.load_identities(paths["rave-staging-2"]))
    problem = recipient_problem(env, "rave-staging-2", keys["rave-staging-2"])
    assert problem is not None
    assert (
        "rave-secrets recipients add --env staging --host rave-staging-2 "
        f"--key '{keys['rave-staging-2']}'" in problem
    )
    assert recipient_problem(env, "rave-staging-1", keys["rave-staging-1"]) is None

    add = ["recipients", "add", "--host", "rave-staging-2", "--key", keys["rave-staging-2"]]
    assert run_cli(env, state, *add) == 0
    assert recipient_problem(env, "rave-staging-2", keys["rave-staging-2"]) is None
    assert env.decrypt(crypto.load_identities(paths["rave-staging-2"]))


def test_a_listed_host_the_file_is_not_encrypted_to_is_refused(staging, tmp_path):
    env, *_ = staging
    _, fourth = _host_key(tmp_path, "key4")
    from rave.secrets.store import Recipient

    env.save_recipients([*env.recipients(), Recipient("host", "rave-staging-4", fourth)])
    problem = recipient_problem(env, "rave-staging-4", fourth)
    assert problem is not None and "reencrypt" in problem
    assert recipient_problem(env, "rave-staging-4", "") is not None


def test_the_last_team_member_cannot_be_removed(staging, capsys):
    env, state, *_ = staging
    assert run_cli(env, state, "recipients", "remove", "--member", "staging-operator") == 1
    assert "last team member" in capsys.readouterr().err


def test_list_shows_who_reads_what(staging, capsys):
    env, state, *_ = staging
    assert run_cli(env, state, "list") == 0
    out = capsys.readouterr().out
    assert "host  rave-staging-1" in out
    assert "webhook (user rave-webhook)" in out


def test_edit_uses_a_private_tmpfs_copy_and_validates(staging, tmp_path, monkeypatch, capsys):
    try:
        probe = cli.private_tmpfs_dir()
    except cli.CliError as error:
        cannot_run_here(f"no tmpfs on this machine ({error})")
    probe.rmdir()
    env, state, *_ = staging
    team = crypto.load_identities(state / "age-identity.txt")
    record = tmp_path / "editor.json"
    editor = tmp_path / "editor.py"
    editor.write_text(
        "import json, os, stat, sys\n"
        "from rave.secrets.cli import filesystem_type\n"
        "from pathlib import Path\n"
        "path = Path(sys.argv[1])\n"
        "text = path.read_text()\n"
        "lines = [l if not l.startswith('grafana_admin_password:') else"
        " 'grafana_admin_password: edited-by-the-test-0123456789' for l in text.splitlines()]\n"
        "path.write_text('\\n'.join(lines) + '\\n')\n"
        f"Path({str(record)!r}).write_text(json.dumps({{'path': str(path),"
        " 'fs': filesystem_type(path),"
        " 'dir_mode': stat.S_IMODE(os.stat(path.parent).st_mode),"
        " 'mode': stat.S_IMODE(os.stat(path).st_mode)}))\n"
    )
    monkeypatch.setenv("EDITOR", f"{sys.executable} {editor}")
    monkeypatch.delenv("VISUAL", raising=False)
    assert run_cli(env, state, "edit") == 0
    seen = json.loads(record.read_text())
    assert seen["fs"] in ("tmpfs", "ramfs")
    assert seen["dir_mode"] == 0o700 and seen["mode"] == 0o600
    assert not os.path.exists(seen["path"])
    assert not os.path.exists(os.path.dirname(seen["path"]))
    assert env.decrypt(team).grafana_admin_password == "edited-by-the-test-0123456789"


def test_edit_refuses_an_invalid_result(staging, tmp_path, monkeypatch, capsys):
    try:
        cli.private_tmpfs_dir().rmdir()
    except cli.CliError as error:
        cannot_run_here(f"no tmpfs on this machine ({error})")
    env, state, *_ = staging
    before = env.encrypted_path.read_text()
    editor = tmp_path / "editor.sh"
    editor.write_text("#!/bin/sh\nsed -i 's/^ccr_api_keys:/ccr_api_kees:/' \"$1\"\n")
    editor.chmod(0o755)
    monkeypatch.setenv("EDITOR", str(editor))
    monkeypatch.delenv("VISUAL", raising=False)
    assert run_cli(env, state, "edit") == 1
    err = capsys.readouterr().err
    assert "ccr_api_kees: unknown key" in err and "ccr_api_keys: missing" in err
    assert env.encrypted_path.read_text() == before


def test_init_creates_an_environment_only_the_member_reads(tmp_path, capsys):
    directory, identity = tmp_path / "secrets", tmp_path / "me.txt"
    argv = ["--env", "prod", "--dir", str(directory), "--identity", str(identity)]
    assert cli.main(["init", "--member", "alice", "--tls-name", "rave.example.org", *argv]) == 0
    env = Environment.named("prod", directory)
    assert [(r.kind, r.name) for r in env.recipients()] == [("team", "alice")]
    assert env.decrypt(crypto.load_identities(identity)).ccr_api_keys == {}
    assert cli.main(["init", "--member", "alice", *argv]) == 1


def test_present_lists_optional_secrets_with_a_value_never_the_value(staging):
    from rave.secrets.staging import generated_values
    from rave.secrets.store import present

    env = staging[0]
    assert env.present_path.exists()  # written with every encryption
    # staging: a local repository, no credentials (ccr_ui_password, also optional, is set),
    # Standard Webhooks on, GitLab off, pgBackRest's cipher pass generated
    assert env.present() == {
        "backup_pgbackrest_cipher_password": True,
        "ccr_ui_password": True,
        "webhook_standard_secrets": True,
    }
    model = generated_values(["h1"])
    data = model.model_dump(mode="json")
    data["backup_repository_env"] = {"AWS_ACCESS_KEY_ID": "AKIA-secret-id"}
    data["backup_sftp_known_hosts"] = "h ssh-ed25519 AAAA"
    facts = present(type(model).model_validate(data))
    assert facts == {
        "backup_pgbackrest_cipher_password": True,
        "backup_repository_env": ["AWS_ACCESS_KEY_ID"],
        "backup_sftp_known_hosts": True,
        "ccr_ui_password": True,
        "webhook_standard_secrets": True,
    }
    assert "AKIA-secret-id" not in json.dumps(facts)
