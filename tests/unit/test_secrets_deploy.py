"""The host side, run locally: the decrypting script, the manifest, the unit and the accounts."""

import importlib.machinery
import importlib.util
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from rave.components import COMPONENTS
from rave.render import FILES, render
from rave.secrets import crypto
from rave.secrets.deploy import accounts_to_create, consumer_units, manifest
from rave.secrets.model import file_content, to_json
from rave.secrets.staging import generated_values
from tasks.secrets import SANDBOX, unit_context
from tests.tools import cannot_run_here, require_tool

SCRIPT = FILES / "secrets" / "rave-secrets-install"


def load_script():
    loader = importlib.machinery.SourceFileLoader("rave_secrets_install", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def values():
    return generated_values(["rave-test-1"])


@pytest.fixture
def host(tmp_path, values):
    """A fake host: host key, encrypted file and manifests (as the current user)."""
    require_tool("age")
    require_tool("ssh-keygen")
    shm = Path("/dev/shm")
    if not shm.is_dir() or load_script().filesystem_of(shm) != "tmpfs":
        cannot_run_here("no tmpfs at /dev/shm")
    key = tmp_path / "ssh_host_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    public = " ".join((tmp_path / "ssh_host_ed25519_key.pub").read_text().split()[:2])
    encrypted = tmp_path / "secrets.age"
    encrypted.write_text(crypto.encrypt(to_json(values), [public]))
    manifests = tmp_path / "secrets.d"
    manifests.mkdir()
    me = pwd.getpwuid(os.getuid()).pw_name
    for component in COMPONENTS:
        if component.secrets:
            text = json.loads(manifest(component, {}))
            text["user"] = me
            (manifests / f"{component.name}.json").write_text(json.dumps(text))
    script = load_script()
    root = shm / f"rave-test-{os.getpid()}-{tmp_path.name}"
    script.ENCRYPTED, script.IDENTITY = str(encrypted), str(key)
    script.MANIFESTS, script.ROOT = manifests, root / "secrets"
    yield script, root / "secrets", manifests
    for directory in root.rglob("*"):
        if directory.is_dir():
            directory.chmod(0o700)
    shutil.rmtree(root, ignore_errors=True)


def test_script_writes_one_private_file_per_secret(host, values):
    script, root, _ = host
    assert script.main() == 0
    assert stat.S_IMODE(root.stat().st_mode) == 0o711
    for component in COMPONENTS:
        directory = root / component.name
        if not component.secrets:
            assert not directory.exists()
            continue
        # root's directory and files (the tests run as root in CI); the reader's group reads
        assert stat.S_IMODE(directory.stat().st_mode) == 0o550
        assert directory.stat().st_uid == 0
        assert directory.stat().st_gid == os.getgid()
        assert sorted(p.name for p in directory.iterdir()) == sorted(component.secrets)
        for name in component.secrets:
            path = directory / name
            root_only = name in component.root_only_secrets
            assert stat.S_IMODE(path.stat().st_mode) == (0o400 if root_only else 0o440)
            assert (path.stat().st_uid, path.stat().st_gid) == (0, 0 if root_only else os.getgid())
            assert path.read_text() == file_content(values, name)


def test_script_is_idempotent_and_removes_stale_secrets(host):
    script, root, manifests = host
    assert script.main() == 0
    (manifests / "ccr.json").unlink()
    data = json.loads((manifests / "nginx.json").read_text())
    data["secrets"].pop("ccr_ui_password_hash")
    (manifests / "nginx.json").write_text(json.dumps(data))
    assert script.main() == 0
    assert not (root / "ccr").exists()
    assert sorted(p.name for p in (root / "nginx").iterdir()) == [
        "tls_certificate",
        "tls_private_key",
    ]


@pytest.fixture
def disk_dir(tmp_path):
    """A fresh directory on a disk-backed filesystem (tmp_path, else /var/tmp, else the repo)."""
    script = load_script()
    for candidate in (tmp_path, Path("/var/tmp"), Path(__file__).resolve().parents[2]):
        if script.filesystem_of(candidate.resolve()) not in script.MEMORY_FILESYSTEMS:
            directory = Path(tempfile.mkdtemp(prefix="rave-test-disk-", dir=candidate))
            yield directory
            shutil.rmtree(directory, ignore_errors=True)
            return
    cannot_run_here("no disk-backed directory: tmp_path, /var/tmp and the repo are all tmpfs")


def test_script_refuses_a_disk_backed_directory(host, disk_dir):
    script, _, _ = host
    script.ROOT = disk_dir / "run" / "secrets"
    assert script.main() == 1
    assert list(script.ROOT.iterdir()) == []


def test_script_fails_when_the_host_is_not_a_recipient(host, tmp_path, values):
    script, root, _ = host
    _, other = crypto.generate_identity()
    Path(script.ENCRYPTED).write_text(crypto.encrypt(to_json(values), [other]))
    assert script.main() == 1
    assert not (root / "webhook").exists()


def test_manifest_changes_with_the_versions_of_its_own_secrets_only():
    webhook = next(c for c in COMPONENTS if c.name == "webhook")
    base = manifest(webhook, {"webhook_hmac_secrets": 1, "grafana_admin_password": 1})
    assert manifest(webhook, {"webhook_hmac_secrets": 1, "grafana_admin_password": 2}) == base
    assert manifest(webhook, {"webhook_hmac_secrets": 2, "grafana_admin_password": 1}) != base
    assert json.loads(base)["user"] == "rave-webhook"


def test_unit_orders_itself_before_every_reader_and_reloads_without_restarting_them():
    text = render("secrets/rave-secrets.service.j2", **unit_context())
    before = next(line for line in text.splitlines() if line.startswith("Before="))
    assert set(before.split("=", 1)[1].split()) == set(consumer_units())
    assert "postgresql@15-main.service" in before
    assert "ExecReload=/usr/local/sbin/rave-secrets-install" in text
    assert "RemainAfterExit=yes" in text and "WantedBy=multi-user.target" in text
    assert "PrivateNetwork" in dict(SANDBOX.extra)


def test_accounts_are_created_only_when_missing():
    names = [a.name for a in accounts_to_create({"www-data", "postgres"})]
    assert "postgres" not in names and "www-data" not in names
    assert {"rave-webhook", "grafana", "rave-ccr"} <= set(names)
    # each daemon's own account (components.py), its home made by systemd or nobody
    own = {
        a.name: a
        for a in accounts_to_create(set())
        if a.name.startswith("rave-") and a.name.endswith(("exporter", "alertmanager"))
    }
    assert set(own) == {
        "rave-alertmanager",
        "rave-node-exporter",
        "rave-postgres-exporter",
        "rave-nginx-exporter",
    }
    assert not any(a.ensure_home for a in own.values())
    assert own["rave-alertmanager"].home == "/var/lib/prometheus/alertmanager"
    postgres = next(a for a in accounts_to_create(set()) if a.name == "postgres")
    assert (postgres.home, postgres.shell) == ("/var/lib/postgresql", "/bin/bash")


class _Op:
    def __init__(self, changed: bool):
        self.changed = changed

    def did_change(self) -> bool:
        return self.changed


class _Host:
    def __init__(self, name: str):
        self.name = name


def test_secrets_changed_follows_the_components_own_manifest():
    from pyinfra.context import ctx_host

    from rave.secrets.deploy import record_manifest_op, secrets_changed

    with ctx_host.use(_Host("h-test")):
        record_manifest_op("h-test", "webhook", _Op(True))
        record_manifest_op("h-test", "nginx", _Op(False))
        webhook, nginx, ccr = (secrets_changed(c) for c in ("webhook", "nginx", "ccr"))
    assert webhook() is True
    assert nginx() is False
    assert ccr() is False  # the secrets task did not run for it: nothing to restart


def test_script_installs_an_older_file_that_lacks_the_optional_secrets(host, values):
    """A file encrypted before the remote-repository secrets existed still installs: the backup
    component gets their defaults from its manifest; a missing required secret still fails."""
    script, root, _ = host
    data = json.loads(to_json(values))
    optional = (
        "backup_repository_env",
        "backup_sftp_private_key",
        "backup_sftp_known_hosts",
        "backup_repository_previous_password",
    )
    for name in optional:
        del data[name]
    public = " ".join(Path(script.IDENTITY + ".pub").read_text().split()[:2])
    Path(script.ENCRYPTED).write_text(crypto.encrypt(json.dumps(data).encode(), [public]))
    assert script.main() == 0
    backup = root / "backup"
    assert (backup / "backup_repository_env").read_text() == "{}"
    assert (backup / "backup_sftp_private_key").read_text() == ""
    assert (backup / "backup_sftp_known_hosts").read_text() == ""
    assert (backup / "backup_repository_previous_password").read_text() == ""
    assert stat.S_IMODE((backup / "backup_sftp_private_key").stat().st_mode) == 0o440
    assert (backup / "backup_repository_password").read_text() == values.backup_repository_password

    del data["backup_repository_password"]  # required: no default, the run fails
    Path(script.ENCRYPTED).write_text(crypto.encrypt(json.dumps(data).encode(), [public]))
    assert script.main() == 1
    # the value present in the file wins over the manifest's default
    data["backup_repository_password"] = values.backup_repository_password
    data["backup_repository_env"] = {"AWS_ACCESS_KEY_ID": "id"}
    Path(script.ENCRYPTED).write_text(crypto.encrypt(json.dumps(data).encode(), [public]))
    assert script.main() == 0
    assert json.loads((backup / "backup_repository_env").read_text()) == {"AWS_ACCESS_KEY_ID": "id"}


def test_only_manifests_with_optional_secrets_carry_defaults():
    by_name = {c.name: c for c in COMPONENTS}
    backup = json.loads(manifest(by_name["backup"], {}))
    assert backup["defaults"] == {
        "backup_repository_env": "{}",
        "backup_repository_previous_password": "",
        "backup_sftp_private_key": "",
        "backup_sftp_known_hosts": "",
    }
    # the webhook's optional providers: an empty list leaves the provider off
    assert json.loads(manifest(by_name["webhook"], {}))["defaults"] == {
        "webhook_gitlab_tokens": "[]",
        "webhook_standard_secrets": "[]",
    }
    # the others stay byte for byte as before (no restart of their readers on upgrade)
