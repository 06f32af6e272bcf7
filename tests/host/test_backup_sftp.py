"""An sftp repository on a live staging host: a second sshd on 127.0.0.1:2222 (a chrooted,
sftp-only user) stands in for the remote server. rave-backup, with a copy of the host's
configuration pointing at it, initialises the repository, backs up and checks it through sftp
with the given key and pinned known_hosts; a known_hosts line of another key is refused.

The credential files are written by the test (root-only) instead of by rave-secrets: their
provisioning from the encrypted file is covered by tests/unit/test_secrets_deploy.py.
"""

from __future__ import annotations

import json

import pytest

RB = "/usr/local/sbin/rave-backup"
BASE = "/var/lib/rave-sftp-test"  # the test's own: keys, sshd config, state, cache, metrics
CHROOT = "/srv/rave-sftp-test"  # the "server's" files: the repository is CHROOT/repo
USER = "rave-sftp-test"
UNIT = "rave-sftp-test"
PORT = 2222
CONFIG = f"{BASE}/backup.json"
REPOSITORY = f"sftp://{USER}@127.0.0.1:{PORT}//repo"

SSHD_CONFIG = f"""\
Port {PORT}
ListenAddress 127.0.0.1
HostKey {BASE}/host_key
PidFile /run/{UNIT}.pid
AuthorizedKeysFile {BASE}/authorized_keys
AuthenticationMethods publickey
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AllowUsers {USER}
Subsystem sftp internal-sftp
Match User {USER}
    ChrootDirectory {CHROOT}
    ForceCommand internal-sftp
    AllowTcpForwarding no
    X11Forwarding no
"""

SETUP = f"""set -e
id {USER} >/dev/null 2>&1 || useradd --system --no-create-home --home-dir / \
    --shell /usr/sbin/nologin {USER}
usermod -p '*' {USER}  # no password, but not locked: sshd without PAM refuses locked accounts
install -d -m 711 {BASE}  # sshd reads authorized_keys as the user
install -d -o root -g root -m 755 {CHROOT}
install -d -o {USER} -g {USER} -m 700 {CHROOT}/repo
for key in host_key other_host_key client_key; do
    [ -f {BASE}/$key ] || ssh-keygen -q -t ed25519 -N '' -C $key -f {BASE}/$key
done
install -m 644 {BASE}/client_key.pub {BASE}/authorized_keys
printf '[127.0.0.1]:{PORT} %s\\n' "$(cut -d' ' -f1,2 {BASE}/host_key.pub)" > {BASE}/known_hosts
printf '[127.0.0.1]:{PORT} %s\\n' "$(cut -d' ' -f1,2 {BASE}/other_host_key.pub)" \
    > {BASE}/wrong_known_hosts
/usr/sbin/sshd -t -f {BASE}/sshd_config
systemctl is-active --quiet {UNIT} || \
    systemd-run --quiet --unit={UNIT} /usr/sbin/sshd -D -e -f {BASE}/sshd_config
for i in $(seq 50); do ss -ltn | grep -q '127.0.0.1:{PORT} ' && exit 0; sleep 0.2; done
echo "sshd on 127.0.0.1:{PORT} did not start" >&2; exit 1
"""

TEARDOWN = f"""systemctl stop {UNIT} 2>/dev/null
systemctl reset-failed {UNIT} 2>/dev/null
userdel {USER} 2>/dev/null
rm -rf {BASE} {CHROOT}
true
"""


def run(host, command: str, *args: str, expect: int | None = 0):
    result = host.run(command, *args)
    if expect is not None:
        assert result.rc == expect, (
            f"`{command}` exited {result.rc} (expected {expect}):\n{result.stdout}\n{result.stderr}"
        )
    return result


@pytest.fixture
def sftp_server(host):
    run(host, "install -d -m 711 %s", BASE)
    run(host, "printf %s %s > " + f"{BASE}/sshd_config", "%s", SSHD_CONFIG)
    try:
        run(host, "sh -c %s", SETUP)
        config = json.loads(run(host, "cat /etc/rave/backup.json").stdout)
        config.update(
            repository=REPOSITORY,
            sftp_key_file=f"{BASE}/client_key",
            sftp_known_hosts_file=f"{BASE}/known_hosts",
            state_dir=f"{BASE}/state",
            cache_dir=f"{BASE}/cache",
            dump_dir=f"{BASE}/state/dump",
            textfile_dir=f"{BASE}/metrics",
            paths=["/etc/rave"],
            databases=False,
            wal_archiving=False,
        )
        run(
            host,
            "install -d -m 700 %s %s %s",
            *(f"{BASE}/{d}" for d in ("state", "cache", "metrics")),
        )
        run(host, "printf %s %s > " + CONFIG, "%s", json.dumps(config))
        run(host, "chmod 600 %s", CONFIG)
        yield config
    finally:
        run(host, "sh -c %s", TEARDOWN)


def test_backup_and_check_through_sftp_with_the_pinned_host_key(host, sftp_server):
    run(host, f"{RB} --config {CONFIG} init")
    backup = run(host, f"{RB} --config {CONFIG} run")
    assert "rave-backup: OK: snapshot" in backup.stdout + backup.stderr
    snapshots = run(host, f"{RB} --config {CONFIG} list").stdout
    assert f"repository {REPOSITORY}: 1 snapshot(s) of host" in snapshots
    run(host, f"{RB} --config {CONFIG} check")
    # the data really is on the "server", in restic's layout, owned by the sftp user
    assert host.file(f"{CHROOT}/repo/config").user == USER
    assert run(host, f"ls {CHROOT}/repo/snapshots | wc -l").stdout.strip() == "1"
    # the key is named by path on the command line, never by content
    assert "PRIVATE KEY" not in run(host, f"cat {CONFIG}").stdout


def test_a_server_whose_key_is_not_pinned_is_refused(host, sftp_server):
    run(host, f"{RB} --config {CONFIG} init")
    config = dict(sftp_server, sftp_known_hosts_file=f"{BASE}/wrong_known_hosts")
    run(host, "printf %s %s > " + CONFIG, "%s", json.dumps(config))

    def logins() -> int:
        journal = run(host, f"journalctl -u {UNIT} --no-pager -o cat").stdout
        return journal.count(f"Accepted publickey for {USER}")

    before = logins()
    assert before >= 1  # the init above logged in with the pinned key
    refused = run(host, f"{RB} --config {CONFIG} check", expect=None)
    output = refused.stdout + refused.stderr
    assert refused.rc == 1, output
    assert "cannot open the repository" in output, output
    # ssh stopped at the host key check: the key was never offered to that server
    assert logins() == before
