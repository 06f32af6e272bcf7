"""rave-secrets rotations that deploy (TLS with --deploy, operator-keys rotate): bad input is
refused naming the option or file before any deploy runs; the deploys run in the safe order."""

from __future__ import annotations

import subprocess

import pytest

from rave.deployrun import DeployResult
from rave.secrets import cli, crypto, operators
from rave.secrets.staging import ensure_staging_environment


def _key_pair(directory, name):
    path = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True
    )
    return path, (directory / f"{name}.pub").read_text().strip()


def _result(ok=True, changed=0):
    return DeployResult(
        command=("pyinfra",),
        returncode=0 if ok else 1,
        seconds=0.0,
        stdout="",
        stderr="",
        operations=(),
        failed_hosts=() if ok else ("rave-staging-1",),
        parsed=True,
    )


class Deploys:
    """Stands in for pyinfra: records each run with the operator keys listed at that moment."""

    def __init__(self, keys_file=None, outcomes=()):
        self.keys_file = keys_file
        self.outcomes = list(outcomes)
        self.calls: list[tuple] = []

    def __call__(self, inventory, deploys, *, extra_args=(), **_):
        listed = operators.read_keys(self.keys_file) if self.keys_file else []
        self.calls.append((str(inventory), tuple(deploys), tuple(extra_args), listed))
        return self.outcomes.pop(0) if self.outcomes else _result()


@pytest.fixture
def env_dir(tmp_path):
    _, host_key = _key_pair(tmp_path, "host")
    state = tmp_path / "state"
    env = ensure_staging_environment(state, {"rave-staging-1": " ".join(host_key.split()[:2])})
    return env, state


@pytest.fixture
def deploys(monkeypatch):
    fake = Deploys()
    monkeypatch.setattr(cli, "run_deploy", fake)
    return fake


def _cli(env, state, *args):
    argv = [*args, "--env", "staging", "--dir", str(env.encrypted_path.parent)]
    return cli.main([*argv, "--identity", str(state / "age-identity.txt")])


# -- TLS ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["bad name", "-x.example", "a..b", "x" * 64 + ".example"])
def test_a_bad_certificate_name_is_refused_before_anything_changes(env_dir, deploys, capsys, name):
    env, state = env_dir
    before = env.encrypted_path.read_bytes()
    assert _cli(env, state, "rotate", "tls_certificate", f"--tls-name={name}", "--deploy") == 1
    assert f"--tls-name {name!r} is neither a DNS name nor an IP address" in capsys.readouterr().err
    assert env.encrypted_path.read_bytes() == before
    assert deploys.calls == []


def test_an_unknown_secret_name_is_refused_by_rotate(env_dir, deploys, capsys):
    env, state = env_dir
    with pytest.raises(SystemExit):
        _cli(env, state, "rotate", "tls_cert", "--deploy")
    assert "invalid choice: 'tls_cert'" in capsys.readouterr().err
    assert deploys.calls == []


def test_a_missing_inventory_is_refused_before_anything_changes(env_dir, deploys, capsys):
    env, state = env_dir
    before = env.encrypted_path.read_bytes()
    code = _cli(env, state, "rotate", "tls_certificate", "--deploy", "--inventory", "nope.py")
    assert code == 1
    assert "no inventory nope.py" in capsys.readouterr().err
    assert env.encrypted_path.read_bytes() == before
    assert deploys.calls == []


def test_tls_rotation_with_deploy_runs_the_full_deploy(env_dir, deploys, capsys):
    env, state = env_dir
    team = crypto.load_identities(state / "age-identity.txt")
    before = env.decrypt(team)
    names = ["rave.example.org", "10.0.0.1"]
    args = ["rotate", "tls_certificate", "--deploy"]
    assert _cli(env, state, *args, *[f"--tls-name={n}" for n in names]) == 0
    after = env.decrypt(team)
    assert after.tls_certificate != before.tls_certificate
    from rave.secrets.generate import certificate_names

    assert certificate_names(after.tls_certificate) == names
    assert deploys.calls == [("inventories/staging.py", ("deploy.py",), (), [])]
    out = capsys.readouterr().out
    assert "nginx.service" in out and after.tls_private_key.splitlines()[1] not in out


def test_a_failed_deploy_after_rotation_exits_non_zero(env_dir, monkeypatch, capsys):
    env, state = env_dir
    monkeypatch.setattr(cli, "run_deploy", Deploys(outcomes=[_result(ok=False)]))
    assert _cli(env, state, "rotate", "tls_certificate", "--deploy") == 1
    assert "the deploy failed" in capsys.readouterr().err


# -- operator keys -----------------------------------------------------------------------------
@pytest.fixture
def keys(tmp_path):
    """An environment directory listing the keys of alice and bob; carol's is new."""
    directory = tmp_path / "operators"
    directory.mkdir()
    pairs = {name: _key_pair(directory, name) for name in ("alice", "bob", "carol")}
    path = operators.keys_path("staging", directory)
    operators.write_keys(path, "staging", [pairs["alice"][1], pairs["bob"][1]])
    return directory, path, pairs


def _rotate(directory, *args):
    return cli.main(["operator-keys", "rotate", "--env", "staging", "--dir", str(directory), *args])


def _refused(capsys, deploys, path, before, message):
    assert message in capsys.readouterr().err
    assert deploys.calls == []
    assert path.read_text() == before


def test_operator_key_rotation_adds_proves_then_removes(keys, monkeypatch, capsys):
    directory, path, pairs = keys
    fake = Deploys(path)
    monkeypatch.setattr(cli, "run_deploy", fake)
    alice, bob, carol = (pairs[n][1] for n in ("alice", "bob", "carol"))
    new_key = str(pairs["carol"][0])
    assert _rotate(directory, "--old", f"{pairs['bob'][0]}.pub", "--new-key", new_key) == 0
    ops = ("ops/operator_keys.py",)
    inv = "inventories/staging.py"
    assert fake.calls == [
        (inv, ops, (), [alice, bob, carol]),  # add the new key
        (inv, ops, ("--key", new_key), [alice, bob, carol]),  # log in with it everywhere
        (inv, ops, ("--key", new_key), [alice, carol]),  # remove the old key, as the new one
        (inv, ops, (), [alice, carol]),  # the inventory's own key still connects
    ]
    assert operators.read_keys(path) == [alice, carol]


def test_the_old_key_stays_when_the_new_one_does_not_log_in(keys, monkeypatch, capsys):
    directory, path, pairs = keys
    fake = Deploys(path, outcomes=[_result(), _result(ok=False)])
    monkeypatch.setattr(cli, "run_deploy", fake)
    code = _rotate(directory, "--old", pairs["bob"][1], "--new-key", str(pairs["carol"][0]))
    assert code == 1
    assert "the new key does not log in on every host: the old key stays" in capsys.readouterr().err
    assert len(fake.calls) == 2
    assert operators.read_keys(path) == [pairs["alice"][1], pairs["bob"][1], pairs["carol"][1]]
    # a rerun resumes: the new key is listed already, nothing is added twice
    fake.outcomes = []
    assert _rotate(directory, "--old", pairs["bob"][1], "--new-key", str(pairs["carol"][0])) == 0
    assert operators.read_keys(path) == [pairs["alice"][1], pairs["carol"][1]]


@pytest.mark.parametrize(
    "make_args, message",
    [
        (
            lambda d, p: ["--old", "ssh-rsa AAAAB3Nza", "--new-key", p["carol"]],
            "--old: no such file",
        ),
        (
            lambda d, p: ["--old", "ssh-ed25519 ", "--new-key", p["carol"]],
            "--old: not an ssh-ed25519",
        ),
        (lambda d, p: ["--old", str(d / "nobody.pub"), "--new-key", p["carol"]], "no such file"),
        (lambda d, p: ["--old", p["carol"] + ".pub", "--new-key", p["carol"]], "the same key"),
        (
            lambda d, p: ["--old", str(d / "stranger.pub"), "--new-key", p["carol"]],
            "--old: that key is not among the operator keys in",
        ),
        (lambda d, p: ["--old", p["bob"] + ".pub", "--new-key", str(d / "none")], "no such file"),
        (
            lambda d, p: ["--old", p["bob"] + ".pub", "--new-key", p["carol"] + ".pub"],
            "give the private key",
        ),
        (
            lambda d, p: ["--old", p["bob"] + ".pub", "--new-key", str(d / "orphan")],
            "no public key",
        ),
        (
            lambda d, p: ["--old", p["bob"] + ".pub", "--new-key", str(d / "mismatch")],
            "is not the private key of",
        ),
        (
            lambda d, p: ["--old", p["bob"] + ".pub", "--new-key", p["carol"], "--inventory", "x"],
            "no inventory x",
        ),
    ],
)
def test_bad_operator_key_arguments_are_refused_before_any_deploy(
    keys, deploys, capsys, make_args, message
):
    directory, path, pairs = keys
    _key_pair(directory, "stranger")
    orphan, _ = _key_pair(directory, "orphan")
    orphan.with_name("orphan.pub").unlink()
    mismatch, _ = _key_pair(directory, "mismatch")
    mismatch.with_name("mismatch.pub").write_text(pairs["alice"][1] + "\n")
    before = path.read_text()
    private = {name: str(pair[0]) for name, pair in pairs.items()}
    assert _rotate(directory, *make_args(directory, private)) == 1
    _refused(capsys, deploys, path, before, message)


def test_a_bad_line_in_the_keys_file_is_named(keys, deploys, capsys):
    directory, path, pairs = keys
    path.write_text(path.read_text() + "ssh-rsa AAAAB3Nza mallory\n")
    before = path.read_text()
    code = _rotate(directory, "--old", pairs["bob"][1], "--new-key", str(pairs["carol"][0]))
    assert code == 1
    _refused(capsys, deploys, path, before, f"{path}:5: not an ssh-ed25519 public key")


def test_a_bad_environment_name_is_refused(keys, deploys, capsys):
    directory, path, pairs = keys
    argv = ["operator-keys", "rotate", "--env", "../prod", "--dir", str(directory)]
    argv += ["--old", pairs["bob"][1], "--new-key", str(pairs["carol"][0])]
    assert cli.main(argv) == 1
    _refused(capsys, deploys, path, path.read_text(), "invalid environment name '../prod'")


def test_the_last_operator_key_is_never_written_away(tmp_path):
    with pytest.raises(operators.StoreError, match="no operator key"):
        operators.write_keys(tmp_path / "staging.operator-keys", "staging", [])


def test_group_data_reads_the_keys_file(keys, monkeypatch):
    directory, _, pairs = keys
    monkeypatch.setenv("RAVE_SECRETS_DIR", str(directory))
    assert operators.configured_keys("staging") == [pairs["alice"][1], pairs["bob"][1]]
    monkeypatch.setenv("RAVE_SECRETS_DIR", str(directory / "elsewhere"))
    assert operators.configured_keys("staging") == []


def test_a_passphrase_protected_new_key_is_refused(keys, deploys, capsys):
    directory, path, pairs = keys
    locked = directory / "locked"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase", "-f", str(locked)], check=True
    )
    before = path.read_text()
    assert _rotate(directory, "--old", pairs["bob"][1], "--new-key", str(locked)) == 1
    _refused(capsys, deploys, path, before, "cannot be read without a passphrase")


def test_the_pgbackrest_cipher_pass_is_refused_by_rotate_saying_why(env_dir, deploys, capsys):
    """pgBackRest cannot re-encrypt a repository: a rotated pass would open nothing."""
    env, state = env_dir
    before = env.encrypted_path.read_bytes()
    assert _cli(env, state, "rotate", "backup_pgbackrest_cipher_password", "--deploy") == 1
    err = capsys.readouterr().err
    assert "cannot re-encrypt a repository" in err and "new repository" in err
    assert env.encrypted_path.read_bytes() == before
    assert deploys.calls == []
