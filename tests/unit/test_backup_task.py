"""What tasks/backup.py puts on the host: configuration, units, sandbox (rendered, no host)."""

import hashlib
import json
import subprocess

from rave.components import backup_paths, component, secret_readers
from rave.render import render
from tasks import backup as task
from tests.unit.conftest import make_settings

SERVICE = "backup/rave-backup.service.j2"


def test_the_backup_component_reads_the_repository_password_as_root():
    backup = component("backup")
    assert backup.user == "root"
    assert "backup_repository_password" in backup.secrets
    assert "restic" in backup.packages
    assert backup in secret_readers("backup_repository_password")
    assert task.password_file() == "/run/rave/secrets/backup/backup_repository_password"


def test_config_derives_paths_from_components_and_keeps_identity_and_secrets():
    s = make_settings(backup_include_extra=["/srv/extra", "/etc/nginx/sites-enabled"])
    config = json.loads(task.config_text(s))
    paths = config["paths"]
    for path in backup_paths():
        assert any(path == p or path.startswith(p + "/") for p in paths), path
    assert "/etc/rave" in paths  # the encrypted secrets file
    assert "/etc/ssh" in paths  # host keys (inside /etc/ssh, so not listed twice)
    assert "/etc/ssh/ssh_host_ed25519_key" not in paths
    assert "/etc/nginx/sites-enabled" not in paths  # inside /etc/nginx
    assert "/srv/extra" in paths
    assert not any(p.startswith("/var/lib/prometheus") for p in paths)
    assert "/var/lib/prometheus" in config["exclude"]
    assert config["keep"] == {"hourly": 24, "daily": 7, "weekly": 4, "monthly": 6}
    assert config["hostname"] == s.hostname
    # file names only: the secrets' files and the marker of the password's hash
    named = ("password_file", "previous_password_file", "password_marker")
    assert "password" not in json.dumps({k: v for k, v in config.items() if k not in named})
    assert config["previous_password_file"].startswith("/run/rave/secrets/backup/")


def test_database_clients_are_derived_from_the_database_secrets():
    assert "rave-webhook.service" in task.db_client_units()
    assert "postgresql@15-main.service" not in task.db_client_units()
    assert "ssh" not in task.restart_units()
    assert "rave-backup" not in task.restart_units()


def test_minimal_paths():
    assert task.minimal_paths(["/etc/ssh/x", "/etc/ssh", "/etc/sshd", "/a", "/a"]) == [
        "/a",
        "/etc/ssh",
        "/etc/sshd",
    ]


def test_units_render_with_schedule_delay_and_secrets_dependency():
    s = make_settings(backup_schedule="*-*-* *:15:00", backup_randomized_delay_sec=900)
    timer = render(
        "backup/rave-backup.timer.j2",
        unit="rave-backup",
        schedule=s.backup_schedule,
        delay=s.backup_randomized_delay_sec,
    )
    assert "OnCalendar=*-*-* *:15:00" in timer
    assert "RandomizedDelaySec=900" in timer
    assert "Persistent=true" in timer
    service = render(
        "backup/rave-backup.service.j2",
        script=task.SCRIPT,
        config=task.CONFIG,
        secrets_unit="rave-secrets",
        postgres_unit="postgresql@15-main",
    )
    assert "Requires=rave-secrets.service" in service
    assert "Type=oneshot" in service
    assert f"ExecStart={task.SCRIPT} --config {task.CONFIG} run" in service


def test_sandbox_writes_only_state_cache_metrics_and_a_local_repository():
    dropin = task.sandbox_dropin(make_settings(backup_repository="/srv/restic"))
    assert "ProtectSystem=strict" in dropin
    line = next(x for x in dropin.splitlines() if x.startswith("ReadWritePaths="))
    assert set(line.split("=", 1)[1].split()) == {
        task.STATE_DIR,
        task.CACHE_DIR,
        "-/var/lib/prometheus/node-exporter",
        "/srv/restic",
        # pgBackRest (as postgres, from the backup run) writes its repository and its log
        "/var/backups/rave/pgbackrest",
        f"-{task.PGBACKREST_LOG}",
    }
    assert "PrivateNetwork=yes" in dropin  # a local repository needs no network
    remote = task.sandbox_dropin(make_settings(backup_repository="sftp:b@h:/r"))
    assert "sftp" not in remote
    assert "PrivateNetwork" not in remote
    assert "SystemCallErrorNumber=EPERM" in remote


def test_local_repository_fact_runs_and_never_reads_the_password(tmp_path):
    """The fact's real command against a temporary repository (restic itself is not run)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "restic").write_text("#!/bin/sh\necho restic must not run >&2; exit 99\n")
    (bin_dir / "restic").chmod(0o755)
    repo, password = tmp_path / "repo", tmp_path / "pw"
    marker = tmp_path / "marker"
    fact = task.BackupRepositoryStatus()

    def status(path: str = f"{bin_dir}:/usr/bin:/bin") -> str:
        command = fact.command(
            repository=str(repo), password_file=str(password), marker=str(marker)
        )
        assert "RESTIC_PASSWORD" not in command
        result = subprocess.run(
            ["/bin/sh", "-c", command],
            capture_output=True,
            text=True,
            env={"PATH": path},
            check=True,
        )
        return fact.process(result.stdout.splitlines())

    assert status() == "no-password"
    password.write_text("secret\n")
    assert status() == "missing"
    repo.mkdir()
    (repo / "config").write_text("x")
    assert status() == "missing"  # no keys: not a repository restic made
    (repo / "keys").mkdir()
    assert status() == "rekey"  # never proven to open it (no marker): `init` checks once
    # the marker rave-backup init/rekey writes once the password opened the repository
    marker.write_text(hashlib.sha256(b"secret\n").hexdigest() + "\n")
    assert status() == "initialized"
    password.write_text("rotated\n")  # a rotation: rekey, still without running restic
    assert status() == "rekey"
    assert status(path="/nonexistent") == "no-restic"
    assert fact.process([]) == "missing"


def test_templates_hook_covers_the_backup_templates():
    names = set(task.templates(make_settings()))
    assert names == {
        "backup/rave-backup.service.j2",
        "backup/rave-backup.timer.j2",
        "backup/rave-backup-maintenance.service.j2",
        "backup/rave-backup-maintenance.timer.j2",
        "backup/rave-backup-wal-status.service.j2",
        "backup/rave-backup-wal-status.timer.j2",
        "backup/wal-archive.conf.j2",
    }
    off = set(task.templates(make_settings(backup_wal_archiving=False)))
    assert "backup/rave-backup-wal-status.timer.j2" not in off


def test_wal_archiving_configuration():
    s = make_settings(backup_wal_archive_timeout_sec=120, backup_pgbackrest_retention_full=3)
    conf = render("backup/wal-archive.conf.j2", **task.wal_archive_context(s))
    assert "archive_mode = on" in conf
    assert f"archive_command = '{task.PGBACKREST} archive-push %p'" in conf
    assert "archive_timeout = 120" in conf
    assert task.wal_archive_conf(s) == "/etc/postgresql/15/main/conf.d/rave-wal-archive.conf"
    config = json.loads(task.config_text(s))
    assert config["wal_archiving"] is True
    assert config["pg_data"] == "/var/lib/postgresql/15/main"
    assert config["pg_unit"] == component("postgresql").unit
    assert config["pgbackrest"]["command"] == task.PGBACKREST
    assert config["pgbackrest"]["repo_path"] == s.backup_pgbackrest_repo_path
    assert not json.loads(task.config_text(make_settings(backup_databases=False)))["wal_archiving"]
    pgbackrest = task.pgbackrest_conf(s)
    assert "repo1-cipher-type=aes-256-cbc" in pgbackrest
    assert "repo1-retention-full=3" in pgbackrest
    assert "pg1-path=/var/lib/postgresql/15/main" in pgbackrest
    assert "cipher-pass" not in pgbackrest  # the pass is never in a file on disk


def test_the_wrapper_reads_the_cipher_pass_from_the_secrets_into_the_environment():
    wrapper = task.pgbackrest_wrapper()
    pass_file = "/run/rave/secrets/postgresql/backup_pgbackrest_cipher_password"
    assert f'PGBACKREST_REPO1_CIPHER_PASS="$(cat {pass_file})"' in wrapper
    assert "export PGBACKREST_REPO1_CIPHER_PASS" in wrapper
    assert f'exec /usr/bin/pgbackrest --stanza={task.STANZA} "$@"' in wrapper
    # postgres (archive_command) must read it: the secret is the postgresql component's
    assert "backup_pgbackrest_cipher_password" in component("postgresql").secrets


def test_stanza_fact_is_ok_only_for_this_cluster_and_repository(tmp_path):
    controldata = tmp_path / "pg_controldata"
    controldata.write_text(
        "#!/bin/sh\necho 'pg_control version number:            1300'\n"
        "echo 'Database system identifier:           7451234567890123456'\n"
    )
    controldata.chmod(0o755)
    marker = tmp_path / "marker"
    fact = task.PgBackRestStanza()

    def status(repo: str = "/var/backups/rave/pgbackrest") -> str:
        command = fact.command(
            marker=str(marker), controldata=str(controldata), data_dir="/d", repo_path=repo
        )
        out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)
        return fact.process(out.stdout.splitlines())

    assert status() == "missing"
    marker.write_text("7451234567890123456 /var/backups/rave/pgbackrest\n")
    assert status() == "ok"
    assert status("/srv/other") == "missing"  # a new repository path: a new stanza
    marker.write_text("1111111111111111111 /var/backups/rave/pgbackrest\n")
    assert status() == "missing"  # another cluster (a fresh host, a restore)


def test_remote_repository_fact_asks_the_installed_script_and_config_names_credential_files():
    fact = task.BackupRepositoryStatus()
    command = fact.command(repository="s3:https://s3.example.org/b/r", password_file="/run/x/pw")
    assert f"{task.SCRIPT} --config {task.CONFIG} status" in command
    assert task.PASSWORD_MARKER in command  # proven once: no restic (network, scrypt) after
    assert "RESTIC_REPOSITORY" not in command  # the script sets up the credentials itself
    config = task.host_config(make_settings(backup_repository="sftp:b@h:/r"))
    assert config["repository_env_file"] == "/run/rave/secrets/backup/backup_repository_env"
    assert config["sftp_key_file"] == "/run/rave/secrets/backup/backup_sftp_private_key"
    assert config["sftp_known_hosts_file"] == "/run/rave/secrets/backup/backup_sftp_known_hosts"


def test_a_monitoring_host_backs_up_its_files_but_never_touches_postgresql():
    """A monitoring host (rave/topology.py) runs no PostgreSQL: no dumps, no WAL archiving, no
    PostgreSQL unit in its backup units, only the paths of the components it runs."""
    s = make_settings(
        monitoring_role=True,
        host_address="10.0.0.9",
        monitoring_scrape_hosts={"svc-1": "10.0.0.1"},
    )
    assert not task.runs_database(s)
    config = task.host_config(s)
    assert config["databases"] is False
    assert config["wal_archiving"] is False
    assert "/etc/nginx" not in config["paths"]
    assert "/var/lib/rave-webhook" not in config["paths"]
    assert {"/etc/rave", "/etc/ssh", "/etc/prometheus"} <= set(config["paths"])
    assert not any("wal" in template for template in task.unit_templates(s))
    for template, (_dest, context) in task.unit_templates(s).items():
        assert "postgresql" not in render(template, **context), template
    service = render("backup/rave-backup.service.j2", **task.unit_templates(s)[SERVICE][1])
    assert "After=network-online.target rave-secrets.service\nWants=" in service
    # a service host keeps all of it
    single = make_settings()
    assert task.runs_database(single) and task.wal_archiving(single)
    service = render("backup/rave-backup.service.j2", **task.unit_templates(single)[SERVICE][1])
    assert "rave-secrets.service postgresql@15-main.service\nWants=" in service


def test_an_s3_repository_is_rendered_with_its_keys_from_the_secrets():
    s = make_settings(
        backup_pgbackrest_repo_type="s3",
        backup_pgbackrest_s3_endpoint="minio.example.org:9000",
        backup_pgbackrest_s3_bucket="rave-pgbackrest",
        backup_pgbackrest_s3_region="us-east-1",
        backup_pgbackrest_s3_uri_style="path",
    )
    conf = task.pgbackrest_conf(s).splitlines()
    global_section = conf[conf.index("[global]") + 1 : conf.index(f"[{task.STANZA}]")]
    assert {
        "repo1-type=s3",
        "repo1-path=/var/backups/rave/pgbackrest",
        "repo1-s3-endpoint=minio.example.org:9000",
        "repo1-s3-bucket=rave-pgbackrest",
        "repo1-s3-region=us-east-1",
        "repo1-s3-uri-style=path",
        "repo1-cipher-type=aes-256-cbc",
    } <= set(global_section)
    assert not any("key" in line for line in conf)  # the key pair is never in a file on disk
    posix = task.pgbackrest_conf(make_settings())
    assert "repo1-type=posix" in posix and "repo1-s3" not in posix

    wrapper = task.pgbackrest_wrapper("s3")
    secrets = "/run/rave/secrets/postgresql"
    assert f'PGBACKREST_REPO1_S3_KEY="$(cat {secrets}/backup_pgbackrest_s3_key)"' in wrapper
    assert (
        f'PGBACKREST_REPO1_S3_KEY_SECRET="$(cat {secrets}/backup_pgbackrest_s3_key_secret)"'
        in wrapper
    )
    assert "export PGBACKREST_REPO1_S3_KEY_SECRET" in wrapper
    assert "S3_KEY" not in task.pgbackrest_wrapper("posix")
    # archive_command runs as postgres: the keys are the postgresql component's secrets
    assert {"backup_pgbackrest_s3_key", "backup_pgbackrest_s3_key_secret"} <= set(
        component("postgresql").secrets
    )
    # another bucket is another repository: the stanza is created again
    config = json.loads(task.config_text(s))
    assert config["pgbackrest"]["repo_id"] == (
        "s3://rave-pgbackrest@minio.example.org:9000/var/backups/rave/pgbackrest"
    )
    assert json.loads(task.config_text(make_settings()))["pgbackrest"]["repo_id"] == (
        "/var/backups/rave/pgbackrest"
    )


def test_the_wrapper_refuses_an_empty_s3_key(tmp_path):
    wrapper = task.pgbackrest_wrapper("s3").replace("/run/rave/secrets/postgresql", str(tmp_path))
    wrapper = wrapper.replace("/usr/bin/pgbackrest", "echo")
    (tmp_path / "backup_pgbackrest_cipher_password").write_text("pass")
    (tmp_path / "backup_pgbackrest_s3_key").write_text("")
    (tmp_path / "backup_pgbackrest_s3_key_secret").write_text("secret")
    script = tmp_path / "wrapper"
    script.write_text(wrapper)
    result = subprocess.run(["sh", str(script), "info"], capture_output=True, text=True)
    assert result.returncode == 1
    assert "backup_pgbackrest_s3_key is empty" in result.stderr
    (tmp_path / "backup_pgbackrest_s3_key").write_text("AKIA")
    result = subprocess.run(["sh", str(script), "info"], capture_output=True, text=True)
    assert result.returncode == 0 and "secret" not in result.stdout
