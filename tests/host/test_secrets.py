"""Secrets on a live staging host: tmpfs, owners and modes, no plaintext anywhere, reboot,
refusal of a host that is not a recipient, and a rotation reaching the host."""

from __future__ import annotations

import hashlib
import io
import secrets
import shutil
import subprocess
import sys
import time

import pytest

from rave.components import COMPONENTS
from rave.deployrun import run_deploy
from rave.secrets import crypto
from rave.secrets.cli import main as rave_secrets
from rave.secrets.deploy import REMOTE_ENCRYPTED, SECRETS_ROOT
from rave.secrets.model import SecretsModel, file_content
from rave.secrets.store import STAGING_IDENTITY, Environment

READERS = [c for c in COMPONENTS if c.secrets]


def _env(staging) -> Environment:
    return Environment.named("staging", staging.instance.state / "secrets")


def _values(staging) -> SecretsModel:
    identities = crypto.load_identities(staging.instance.state / STAGING_IDENTITY)
    return _env(staging).decrypt(identities)


def _needles(values: SecretsModel) -> list[str]:
    """Distinctive pieces of every secret value (the certificate is public: left out)."""
    needles = [
        values.postgres_webhook_password,
        values.postgres_exporter_password,
        values.grafana_admin_password,
        values.backup_repository_password,
        values.ccr_ui_password_hash.split(":", 1)[1],
        *values.webhook_hmac_secrets,
        *values.ccr_api_keys.values(),
    ]
    if values.ccr_ui_password:
        needles.append(values.ccr_ui_password)
    key_lines = [line for line in values.tls_private_key.splitlines() if "-----" not in line]
    needles += [line for line in key_lines if len(line) >= 40]
    return [n for n in needles if len(n) >= 16]


def _ssh(staging, name: str, command: str, stdin: str = "", timeout: float = 300):
    return subprocess.run(
        ["ssh", "-F", str(staging.instance.ssh_config), name, command],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _wait_for_boot(staging, name: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = _ssh(staging, name, "systemctl is-system-running --wait", timeout=timeout).stdout
        if state.strip() in ("running", "degraded"):
            return
        time.sleep(2)
    pytest.fail(f"{name} did not finish booting: {state!r}")


def _host_hashes(host) -> dict[str, str]:
    out = host.check_output(f"find {SECRETS_ROOT} -type f -exec sha256sum {{}} +")
    return {line.split()[1]: line.split()[0] for line in out.splitlines()}


def _expected_hashes(values: SecretsModel) -> dict[str, str]:
    return {
        f"{SECRETS_ROOT}/{c.name}/{name}": hashlib.sha256(
            file_content(values, name).encode()
        ).hexdigest()
        for c in READERS
        for name in c.secrets
    }


def _name(host) -> str:
    return str(host.backend.host.name)


def test_service_is_active_and_enabled(host):
    service = host.service("rave-secrets")
    assert service.is_enabled
    assert service.is_running or host.run("systemctl is-active rave-secrets").stdout.strip() == (
        "active"
    )


def test_only_the_encrypted_file_is_on_the_host(host, staging):
    remote = host.file(REMOTE_ENCRYPTED)
    assert (remote.user, remote.group, remote.mode) == ("root", "root", 0o600)
    assert host.check_output(f"head -1 {REMOTE_ENCRYPTED}") == crypto.ARMOR_BEGIN
    local = _env(staging).encrypted_path.read_bytes()
    assert remote.sha256sum == hashlib.sha256(local).hexdigest()


def test_secrets_live_on_tmpfs(host):
    assert host.check_output(f"findmnt -n -o FSTYPE -T {SECRETS_ROOT}") == "tmpfs"


def test_owners_and_modes(host):
    root = host.file(SECRETS_ROOT)
    assert (root.user, root.mode) == ("root", 0o711)
    listed = set(host.check_output(f"ls -A {SECRETS_ROOT}").split())
    assert listed == {c.name for c in READERS}
    for component in READERS:
        directory = host.file(f"{SECRETS_ROOT}/{component.name}")
        group = host.check_output(f"id -gn {component.user}")
        assert (directory.user, directory.group, directory.mode) == (
            "root",
            group,
            0o550,
        ), component.name
        names = set(host.check_output(f"ls -A {SECRETS_ROOT}/{component.name}").split())
        assert names == set(component.secrets)
        for name in component.secrets:
            secret = host.file(f"{SECRETS_ROOT}/{component.name}/{name}")
            expected = ("root", "root", 0o400) if name in component.root_only_secrets else (
                "root", group, 0o440)  # fmt: skip
            assert (secret.user, secret.group, secret.mode) == expected, f"{component.name}/{name}"


def test_values_are_the_encrypted_ones(host, staging):
    assert _host_hashes(host) == _expected_hashes(_values(staging))


def test_each_reader_reads_only_its_own_secrets(host):
    webhook = f"{SECRETS_ROOT}/webhook/webhook_hmac_secrets"
    assert host.run(f"runuser -u rave-webhook -- cat {webhook}").rc == 0
    assert host.run(f"runuser -u rave-webhook -- cat {SECRETS_ROOT}/nginx/tls_private_key").rc != 0
    assert host.run(f"runuser -u www-data -- cat {webhook}").rc != 0
    # nginx's workers run as www-data: they read the htpasswd file, never the TLS key
    assert host.run(f"runuser -u www-data -- cat {SECRETS_ROOT}/nginx/ccr_ui_password_hash").rc == 0
    assert host.run(f"runuser -u www-data -- cat {SECRETS_ROOT}/nginx/tls_private_key").rc != 0
    # no service account can plant or replace a file among its own secrets
    assert host.run(f"runuser -u rave-webhook -- touch {SECRETS_ROOT}/webhook/planted").rc != 0
    assert host.run(f"runuser -u www-data -- mv {SECRETS_ROOT}/nginx/tls_certificate /tmp/").rc != 0
    assert host.run(f"runuser -u nobody -- ls {SECRETS_ROOT}").rc != 0


def test_no_secret_value_on_disk_in_processes_or_logs(host, staging):
    needles = _needles(_values(staging))
    assert len(needles) >= 8
    grep = _ssh(
        staging,
        _name(host),
        "sudo grep -rlaF -D skip -d recurse -f - /etc /var /home /root /opt /srv /usr/local",
        stdin="\n".join(needles) + "\n",
    )
    assert grep.stdout == "", f"secret values found on disk in: {grep.stdout}"
    assert grep.returncode == 1, grep.stderr
    processes = host.check_output("ps -eo args")
    environments = host.check_output(
        "cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' || true"
    )
    journal = host.check_output("journalctl -b --no-pager -o cat")
    for needle in needles:
        assert needle not in processes
        assert needle not in environments
        assert needle not in journal


def test_a_host_that_is_not_a_recipient_is_refused_before_anything_is_sent(host, staging, tmp_path):
    name = _name(host)
    copy = tmp_path / "secrets"
    shutil.copytree(_env(staging).encrypted_path.parent, copy)
    identity = str(staging.instance.state / STAGING_IDENTITY)
    argv = ["--env", "staging", "--dir", str(copy), "--identity", identity]
    assert rave_secrets(["recipients", "remove", "--host", name, *argv]) == 0
    before = host.file(REMOTE_ENCRYPTED).sha256sum
    deploy_file = tmp_path / "secrets_only.py"
    deploy_file.write_text("from tasks.secrets import secrets\n\nsecrets()\n")
    result = run_deploy(
        "inventories/staging.py",
        (str(deploy_file),),
        limit=name,
        extra_args=("--data", f"secrets_file={copy}/staging.age"),
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    key = " ".join(host.file("/etc/ssh/ssh_host_ed25519_key.pub").content_string.split()[:2])
    assert f"rave-secrets recipients add --env staging --host {name} --key '{key}'" in output
    assert not [op for op in result.operations if op.changed_hosts or op.error_hosts]
    assert host.file(REMOTE_ENCRYPTED).sha256sum == before


def test_a_rotated_secret_reaches_only_its_readers(host, staging, tmp_path, monkeypatch):
    """Rotate a secret no running service uses in staging (grafana is not installed there)."""
    name = _name(host)
    identity = str(staging.instance.state / STAGING_IDENTITY)
    old = _values(staging).grafana_admin_password
    # `set` (Grafana's password is changed on the host, then recorded: `rotate` refuses it)
    monkeypatch.setattr(sys, "stdin", io.StringIO(secrets.token_urlsafe(24) + "\n"))
    assert rave_secrets(["set", "grafana_admin_password", "--identity", identity]) == 0
    deploy_file = tmp_path / "secrets_only.py"
    deploy_file.write_text("from tasks.secrets import secrets\n\nsecrets()\n")
    result = run_deploy("inventories/staging.py", (str(deploy_file),), limit=name)
    assert result.ok, result.log_tail()
    changed = result.changed_operations()
    manifests = [op for op in changed if "Manifest of" in op]
    assert manifests == [f"Secrets | Manifest of grafana's secrets on {name}"], changed
    assert any("reload rave-secrets" in op for op in changed), changed
    assert _host_hashes(host) == _expected_hashes(_values(staging))
    assert old not in host.check_output(f"cat {SECRETS_ROOT}/grafana/grafana_admin_password")


def test_secrets_are_back_after_a_reboot(host, staging):
    name = _name(host)
    staging.reboot(name)
    _wait_for_boot(staging, name)
    rebooted = staging.testinfra_host(name)
    assert rebooted.run("systemctl is-active rave-secrets").stdout.strip() == "active"
    assert rebooted.check_output(f"findmnt -n -o FSTYPE -T {SECRETS_ROOT}") == "tmpfs"
    assert _host_hashes(rebooted) == _expected_hashes(_values(staging))
    directory = rebooted.file(f"{SECRETS_ROOT}/webhook")
    assert (directory.user, directory.group, directory.mode) == ("root", "rave-webhook", 0o550)
