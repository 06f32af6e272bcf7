"""Rotations that end on the host, run with the operators' tool end to end:

- TLS: `rave-secrets rotate tls_certificate --deploy`; the certificate served on :3002 changes
  from the old to the new one, nginx is reloaded (same master process), and HTTPS requests
  made during the whole deploy all succeed.
- Backup repository password: `rave-secrets rotate backup_repository_password`, deploy; restic's
  key moved (a backup works with the new password, the old one is refused, a snapshot taken
  before the rotation restores), a second deploy changes nothing, `--retire-old` drops the
  previous value.
- Operator SSH key: `rave-secrets operator-keys rotate`; afterwards the new key logs in, the old
  one is refused and the deploy still connects. The harness's own key is never touched: the test
  rotates a second operator key and removes it again at the end.
"""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

from rave.deployrun import run_deploy
from rave.secrets import operators
from rave.secrets.cli import main as rave_secrets
from rave.secrets.store import STAGING_IDENTITY
from rave.staging import OPERATOR
from tests.host.edge_support import PORT, values
from tests.host.secrets_rotation import rotate_and_deploy, staging_value
from tests.host.units import start_unit

OPERATOR_KEYS_DEPLOY = "ops/operator_keys.py"


def _name(host) -> str:
    return str(host.backend.host.name)


# -- TLS ----------------------------------------------------------------------------------------
def _fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def _pem_fingerprint(pem: str) -> str:
    return _fingerprint(ssl.PEM_cert_to_DER_cert(pem))


def _probe(address: str) -> tuple[str, str]:
    """One HTTPS request on a new connection: (fingerprint of the served certificate, status)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # self-signed; the fingerprint is what is checked
    raw = socket.create_connection((address, PORT), timeout=10)
    with raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(b"GET / HTTP/1.1\r\nHost: rave\r\nConnection: close\r\n\r\n")
        head = b""
        while b"\r\n" not in head:
            chunk = tls.recv(256)
            if not chunk:
                break
            head += chunk
    return _fingerprint(der), head.split(b"\r\n", 1)[0].decode(errors="replace")


class Prober(threading.Thread):
    """HTTPS requests in a loop until stopped; records every certificate seen and every failure."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.stop = threading.Event()
        self.seen: list[str] = []
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                fingerprint, status = _probe(self.address)
                self.seen.append(fingerprint)
                if " 200 " not in f"{status} ":
                    self.failures.append(status)
            except OSError as error:
                self.failures.append(repr(error))
            time.sleep(0.1)


def _nginx_master(host) -> str:
    return str(host.check_output("systemctl show -p MainPID --value nginx"))


def test_tls_rotation_serves_the_new_certificate_without_a_failed_request(host, staging):
    address = staging.address(_name(host))
    old = _pem_fingerprint(values(staging).tls_certificate)
    assert _probe(address) == (old, "HTTP/1.1 200 OK")
    master = _nginx_master(host)
    identity = str(staging.instance.state / STAGING_IDENTITY)

    prober = Prober(address)
    prober.start()
    try:
        argv = ["rotate", "tls_certificate", "--deploy", "--env", "staging"]
        code = rave_secrets([*argv, "--identity", identity])
    finally:
        prober.stop.set()
        prober.join(timeout=30)
    assert code == 0, "rave-secrets rotate tls_certificate --deploy failed"

    new = _pem_fingerprint(values(staging).tls_certificate)
    assert new != old
    assert _probe(address) == (new, "HTTP/1.1 200 OK")
    assert host.service("nginx").is_running
    assert _nginx_master(host) == master, "nginx was restarted, not reloaded"
    assert prober.failures == [], f"requests failed during the rotation: {prober.failures[:5]}"
    assert len(prober.seen) >= 20, "too few requests during the deploy to show anything"
    assert set(prober.seen) == {old, new}
    assert prober.seen[-1] == new


# -- backup repository password ---------------------------------------------------------------
RB = "/usr/local/sbin/rave-backup"
REPOSITORY = "/var/backups/rave/restic"  # the settings' default (staging keeps it local)
BACKUP_SECRETS = "/run/rave/secrets/backup"
REKEY_OP = "Initialise the restic repository, or move its key to a rotated password"


def _backup(host) -> str:
    """One run of the real unit; returns its snapshot id."""
    result = start_unit(host, "rave-backup.service")
    journal = host.run("journalctl -u rave-backup.service -n 30 --no-pager -o cat").stdout
    assert result.rc == 0, f"rave-backup.service failed:\n{result.stderr}\n{journal}"
    state = json.loads(host.check_output("cat /var/lib/rave-backup/state.json"))
    assert state["last_exit_code"] == 0
    return str(state["last_snapshot"])


def _opens(host, password_file: str):
    """restic with this password file only (the value never on a command line)."""
    return host.run(
        f"RESTIC_CACHE_DIR=/var/cache/rave-backup restic -r {REPOSITORY} "
        f"--password-file {password_file} cat config"
    )


def _keys(host) -> list[str]:
    return sorted(host.check_output(f"ls {REPOSITORY}/keys").split())


def test_backup_password_rotation_moves_the_restic_key(host, staging):
    name = _name(host)
    password = f"{BACKUP_SECRETS}/backup_repository_password"
    previous = f"{BACKUP_SECRETS}/backup_repository_previous_password"
    before = _backup(host)
    keys = _keys(host)

    old, new, result = rotate_and_deploy(staging, "backup_repository_password")
    changed = result.changed_operations()
    assert any(REKEY_OP in op for op in changed), changed
    # the host's files hold the new value and, until retired, the old one
    assert host.file(password).sha256sum == hashlib.sha256(new.encode()).hexdigest()
    assert host.file(previous).sha256sum == hashlib.sha256(old.encode()).hexdigest()

    assert _opens(host, password).rc == 0
    refused = _opens(host, previous)
    assert refused.rc != 0 and "wrong password" in refused.stderr, refused.stderr
    after_keys = _keys(host)
    assert len(after_keys) == len(keys) and set(after_keys).isdisjoint(keys)
    after = _backup(host)  # the timer's unit, with the new password
    assert after != before
    out = host.check_output(f"{RB} restore --scope database --snapshot {before} --yes")
    assert f"RESTORED: snapshot {before[:8]}" in out

    # a second deploy changes nothing (no restic key derivation either: the marker matches)
    again = run_deploy("inventories/staging.py", ("deploy.py",), limit=name)
    assert again.ok and again.changed == 0, again.changed_operations()
    assert _keys(host) == after_keys

    # --retire-old drops the previous value; the repository's keys stay as they are
    identity = str(staging.instance.state / STAGING_IDENTITY)
    argv = ["rotate", "backup_repository_password", "--retire-old", "--env", "staging"]
    assert rave_secrets([*argv, "--identity", identity]) == 0
    assert staging_value(staging, "backup_repository_previous_password") == ""
    retired = run_deploy("inventories/staging.py", ("deploy.py",), limit=name)
    assert retired.ok, retired.log_tail(60)
    assert host.file(previous).content_string == ""
    assert _keys(host) == after_keys
    assert _opens(host, password).rc == 0
    for secret in (old, new):
        assert secret not in result.stdout + result.stderr
        assert secret not in retired.stdout + retired.stderr


# -- operator SSH keys -------------------------------------------------------------------------
def _key_pair(directory: Path, name: str) -> tuple[Path, str]:
    path = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True
    )
    return path, path.with_name(f"{name}.pub").read_text().strip()


def _login(staging, name: str, key: Path) -> subprocess.CompletedProcess[str]:
    """Log in with this key only (not the harness's ssh_config) and use sudo."""
    return subprocess.run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={staging.instance.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ConnectTimeout=10",
            f"{OPERATOR}@{staging.address(name)}",
            "sudo -n true && echo logged-in",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _authorised(host) -> list[str]:
    text = host.file(f"/home/{OPERATOR}/.ssh/authorized_keys").content_string
    return [operators.key_id(line) for line in text.splitlines() if line.strip()]


def test_operator_key_rotation_new_key_in_old_key_out_deploy_connects(host, staging, tmp_path):
    name = _name(host)
    keys_file = operators.keys_path("staging")
    saved = keys_file.read_text() if keys_file.exists() else None
    harness = Path(f"{staging.instance.key}.pub").read_text().strip()
    old, old_public = _key_pair(tmp_path, "rave-test-operator-old")
    new, new_public = _key_pair(tmp_path, "rave-test-operator-new")
    try:
        # a second operator whose key is then rotated (the harness key stays authorised)
        operators.write_keys(keys_file, "staging", [harness, old_public])
        assert staging.deploy(OPERATOR_KEYS_DEPLOY).ok
        assert "logged-in" in _login(staging, name, old).stdout
        assert _login(staging, name, new).returncode == 255  # not yet authorised

        argv = ["operator-keys", "rotate", "--env", "staging"]
        assert rave_secrets([*argv, "--old", f"{old}.pub", "--new-key", str(new)]) == 0

        assert "logged-in" in _login(staging, name, new).stdout
        refused = _login(staging, name, old)
        assert refused.returncode == 255 and "Permission denied" in refused.stderr
        assert _authorised(host) == [operators.key_id(harness), operators.key_id(new_public)]
        again = staging.deploy(OPERATOR_KEYS_DEPLOY)  # the deploy's own key still connects
        assert again.ok and again.changed == 0, again.summary()
    finally:
        if saved is None:
            keys_file.unlink(missing_ok=True)
        else:
            keys_file.write_text(saved)
        restored = staging.deploy(OPERATOR_KEYS_DEPLOY)
    assert restored.ok, restored.summary()
    assert _authorised(host) == [operators.key_id(harness)]
