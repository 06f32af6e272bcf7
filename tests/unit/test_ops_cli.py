"""rave-ops: command lines it builds and the update rollout logic, with a fake pyinfra."""

import subprocess

import pytest

from rave.ops import cli


class FakeRunner(cli.Runner):
    """Records pyinfra runs; `fail` maps (host, deploy file, marker) to a failing exit code."""

    def __init__(self, hosts, fail=()):
        super().__init__(inventory="inventories/staging.py", limit=[])
        self._hosts = hosts
        self.fail = set(fail)
        self.calls = []

    def hosts(self):
        return self._hosts

    def run(self, *args, limit=None, capture=False, yes=True):
        host = (limit or ["*"])[0]
        self.calls.append((host, args))
        code = 0
        for fail_host, file, marker in self.fail:
            if host == fail_host and file in args and (marker is None or marker in args):
                code = 1
        return subprocess.CompletedProcess(args, code, "", "")


def files(runner, host):
    return [next(a for a in args if a.endswith(".py")) for h, args in runner.calls if h == host]


def test_command_line():
    runner = cli.Runner(inventory="inventories/staging.py", limit=["rave-staging-1"])
    cmd = runner.command("ops/service.py", "--data", "ops_action=status")
    assert cmd[1:] == [
        "-m",
        "pyinfra",
        "-y",
        "--limit",
        "rave-staging-1",
        "inventories/staging.py",
        "ops/service.py",
        "--data",
        "ops_action=status",
    ]


def test_service_command_passes_selection(monkeypatch):
    runner = FakeRunner(["h1"])
    opts = cli.parser().parse_args(["restart", "webhook", "nginx"])
    assert cli.cmd_service(runner, opts) == 0
    args = runner.calls[0][1]
    assert "ops_action=restart" in args and "ops_services=webhook,nginx" in args


def test_successful_config_update_order():
    runner = FakeRunner(["h1", "h2"])
    opts = cli.parser().parse_args(["update", "config"])
    assert cli.cmd_update(runner, opts) == 0
    expected = ["ops/backup_now.py", "ops/snapshot.py", "deploy.py", "ops/validate.py"]
    assert files(runner, "h1") == expected
    assert files(runner, "h2") == expected


def test_failed_validation_rolls_back_and_stops_the_rollout(capsys):
    runner = FakeRunner(["h1", "h2"], fail={("h1", "ops/validate.py", "--data")})
    opts = cli.parser().parse_args(["update", "config", "--force-validation-failure"])
    assert cli.cmd_update(runner, opts) == 1
    h1 = [args for host, args in runner.calls if host == "h1"]
    assert any("ops_snapshot=restore" in args for args in h1)
    assert any("ops_validate_force_failure=true" in args for args in h1)
    assert files(runner, "h2") == []
    out = capsys.readouterr().out
    assert "h1: FAIL validation failed; rolled back; host valid after it" in out
    assert "h2: FAIL not updated: rollout stopped" in out


def test_failure_threshold_lets_the_rollout_continue():
    runner = FakeRunner(["h1", "h2"], fail={("h1", "deploy.py", None)})
    opts = cli.parser().parse_args(["update", "config", "--max-failures", "1"])
    assert cli.cmd_update(runner, opts) == 1
    assert "deploy.py" in files(runner, "h2")


def test_failed_backup_changes_nothing(capsys):
    runner = FakeRunner(["h1", "h2"], fail={("h1", "ops/backup_now.py", None)})
    assert cli.cmd_update(runner, cli.parser().parse_args(["update", "config"])) == 1
    assert files(runner, "h1") == ["ops/backup_now.py"]
    assert files(runner, "h2") == []
    assert "h1: FAIL backup failed: nothing was changed" in capsys.readouterr().out


def test_failed_snapshot_changes_nothing():
    runner = FakeRunner(["h1"], fail={("h1", "ops/snapshot.py", None)})
    assert cli.cmd_update(runner, cli.parser().parse_args(["update", "security"])) == 1
    assert "deploy.py" not in files(runner, "h1")
    assert "ops/update.py" not in files(runner, "h1")


@pytest.mark.parametrize("component", ["debian", "postgresql"])
def test_untestable_major_updates_print_a_runbook_and_change_nothing(component, capsys):
    runner = FakeRunner(["h1"])
    assert cli.cmd_update(runner, cli.parser().parse_args(["update", "major", component])) == 2
    out = capsys.readouterr().out
    assert "NOT AUTOMATED, and this command changed nothing" in out
    assert "disk snapshot" in out
    assert runner.calls == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["update", "major"], "needs a component"),
        (["update", "major", "nginx"], "unknown component 'nginx'"),
        (["update", "major", "ccr"], "needs --to VERSION"),
        (["update", "major", "ccr", "--to", "2.x"], "setting ccr_version: String should match"),
        (["update", "config", "ccr"], "takes no component"),
    ],
)
def test_bad_major_update_is_refused_before_any_host(argv, message, capsys):
    runner = FakeRunner(["h1"])
    assert cli.cmd_update(runner, cli.parser().parse_args(argv)) == 2
    assert message in capsys.readouterr().err
    assert runner.calls == []


def test_major_update_saves_deploys_the_version_validates_and_discards(capsys):
    runner = FakeRunner(["h1"])
    opts = cli.parser().parse_args(["update", "major", "ccr", "--to", "2.0.0"])
    assert cli.cmd_update(runner, opts) == 0
    steps = [
        (args[0], next((a for a in args if a.startswith(("ops_major_action", "ccr_"))), ""))
        for _, args in runner.calls
        if args[0] not in ("ops/snapshot.py", cli.BACKUP_FILE)
    ]
    assert steps == [
        ("ops/major.py", "ops_major_action=save"),
        ("deploy.py", "ccr_version=2.0.0"),
        ("ops/major.py", "ops_major_action=settle"),
        ("ops/validate.py", ""),
        ("ops/major.py", "ops_major_action=discard"),
    ]
    assert files(runner, "h1").index("ops/snapshot.py") < files(runner, "h1").index("ops/major.py")
    out = capsys.readouterr().out
    assert "h1: OK   updated and validated" in out
    assert "set ccr_version = '2.0.0' in group_data" in out


def test_failed_major_update_restores_the_software_and_stops_the_rollout(capsys):
    runner = FakeRunner(["h1", "h2"], fail={("h1", "ops/validate.py", "--data")})
    opts = cli.parser().parse_args(
        ["update", "major", "ccr", "--to", "3.1.1", "--force-validation-failure"]
    )
    assert cli.cmd_update(runner, opts) == 1
    h1 = [args for host, args in runner.calls if host == "h1"]
    actions = [a for args in h1 for a in args if a.startswith(("ops_major_action", "ops_snap"))]
    assert actions[actions.index("ops_snapshot=restore") :] == [
        "ops_snapshot=restore",
        "ops_major_action=restore",
        "ops_major_action=settle",
    ]
    assert "ops_major_action=discard" not in actions
    assert files(runner, "h2") == []
    out = capsys.readouterr().out
    assert "h1: FAIL validation failed; rolled back; host valid after it" in out
    assert "h2: FAIL not updated: rollout stopped" in out
    assert "group_data" not in out  # nothing was updated: nothing to pin


def test_failed_save_changes_nothing():
    runner = FakeRunner(["h1"], fail={("h1", "ops/major.py", "ops_major_action=save")})
    opts = cli.parser().parse_args(["update", "major", "ccr", "--to", "2.0.0"])
    assert cli.cmd_update(runner, opts) == 1
    assert "deploy.py" not in files(runner, "h1")


def test_unknown_command_is_refused():
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["reboot"])


def test_limit_accepts_names_globs_and_groups():
    entries = [
        {"name": "rave-prod-1", "groups": ["rave", "prod"]},
        {"name": "rave-prod-2", "groups": ["rave", "prod"]},
        {"name": "rave-staging-1", "groups": ["rave", "staging"]},
    ]
    assert cli.limited(entries, []) == ["rave-prod-1", "rave-prod-2", "rave-staging-1"]
    assert cli.limited(entries, ["rave-prod-2"]) == ["rave-prod-2"]
    assert cli.limited(entries, ["rave-prod-*"]) == ["rave-prod-1", "rave-prod-2"]
    assert cli.limited(entries, ["staging"]) == ["rave-staging-1"]


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("true", True),
        ("False", False),
        ("12", 12),
        ('[{"a": 1}]', [{"a": 1}]),
        ("2.0.0", "2.0.0"),
        ("1.5", 1.5),
        ("text", "text"),
    ],
)
def test_data_values_are_read_as_pyinfra_reads_them(raw, value):
    # as pyinfra_cli.util.parse_cli_arg (not imported here: it monkey-patches with gevent)
    assert cli.data_value(raw) == value


def test_major_update_settings_go_to_the_deploy_only(capsys):
    runner = FakeRunner(["h1"])
    providers = '[{"name": "p", "api_base_url": "https://llm.invalid/v1", "models": ["m"]}]'
    argv = ["update", "major", "ccr", "--to", "2.0.0", "--set", f"ccr_providers={providers}"]
    assert cli.cmd_update(runner, cli.parser().parse_args(argv)) == 0
    with_settings = [args for _, args in runner.calls if f"ccr_providers={providers}" in args]
    assert [args[0] for args in with_settings] == ["deploy.py"]
    assert "ccr_version=2.0.0" in with_settings[0]
    assert "(and ccr_providers as given with --set)" in capsys.readouterr().out
