"""rave-ops: command lines it builds and the update rollout logic, with a fake pyinfra."""

import json
import os
import shlex
import subprocess
import sys

import pytest

from rave.ops import cli, deadletters


class FakeRunner(cli.Runner):
    """Records pyinfra runs; `fail` maps (host, deploy file, marker) to a failing exit code."""

    def __init__(self, hosts, fail=()):
        super().__init__(inventory="inventories/staging.py", limit=[])
        self._hosts = hosts
        self.fail = set(fail)
        self.calls = []
        self.envs = []

    def hosts(self):
        return self._hosts

    def run(self, *args, limit=None, capture=False, yes=True, env=None):
        host = (limit or ["*"])[0]
        self.calls.append((host, args))
        self.envs.append(env)
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


@pytest.mark.parametrize(
    ("argv", "host_args"),
    [
        (["list"], ["list"]),
        (["show", "3f2a9c0d"], ["show", "3f2a9c0d"]),
        (["redrive", "3f2a9c0d"], ["redrive", "3f2a9c0d"]),
        (["redrive", "--all"], ["redrive", "--all"]),
        (["discard", "--all"], ["discard", "--all"]),
    ],
)
def test_dead_letters_run_ops_dead_letters_with_the_request(argv, host_args):
    runner = FakeRunner(["h1"])
    opts = cli.parser().parse_args(["dead-letters", *argv])
    assert cli.cmd_dead_letters(runner, opts) == 0
    assert runner.calls == [("*", ("ops/dead_letters.py",))]
    sent = runner.envs[0][deadletters.ENV]
    assert json.loads(sent) == host_args
    assert deadletters.decode(sent) == host_args


def test_a_failed_dead_letters_run_exits_1():
    runner = FakeRunner(["h1"], fail={("*", "ops/dead_letters.py", None)})
    opts = cli.parser().parse_args(["dead-letters", "redrive", "--all"])
    assert cli.cmd_dead_letters(runner, opts) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["show"], "show takes one letter id"),
        (["show", "--all"], "show takes one letter id"),
        (["redrive"], "redrive takes one letter id or --all"),
        (["discard", "abc", "--all"], "discard takes one letter id or --all"),
        (["list", "abc"], "list takes no id"),
        (["show", "../../etc/passwd"], "is not a letter id"),
        (["discard", "ABC; rm -rf /"], "is not a letter id"),
    ],
)
def test_bad_dead_letters_requests_are_refused_before_any_host(argv, message, capsys):
    runner = FakeRunner(["h1"])
    opts = cli.parser().parse_args(["dead-letters", *argv])
    assert cli.cmd_dead_letters(runner, opts) == 2
    assert runner.calls == []
    assert message in capsys.readouterr().err


def test_dead_letters_unknown_action_is_refused():
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["dead-letters", "purge"])


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '"list"',
        "[]",
        '["purge"]',
        '["show"]',
        '["show", "abc", "def"]',
        '["redrive", "--all", "abc"]',
        '["discard", "xyz"]',
        '["list", 1]',
    ],
)
def test_the_pyinfra_run_checks_the_request_again(text):
    with pytest.raises(ValueError):
        deadletters.decode(text)


def test_the_pyinfra_run_lists_by_default():
    assert deadletters.decode(None) == ["list"]
    assert deadletters.decode("") == ["list"]


def test_the_host_command_runs_the_receivers_cli_as_its_user():
    command = deadletters.host_command(["redrive", "--all"])
    cd, _, rest = command.partition(" && ")
    assert cd == "cd /"
    assert shlex.split(rest) == [
        "runuser",
        "-u",
        "rave-webhook",
        "--",
        "env",
        "PYTHONPATH=/opt/rave/lib",
        "RAVE_WEBHOOK_CONFIG=/etc/rave-webhook/config.json",
        "python3",
        "-m",
        "rave_webhook.deadletter",
        "redrive",
        "--all",
    ]


def test_the_host_command_matches_the_deployed_receiver():
    from rave.components import component
    from tasks import webhook

    assert deadletters.LIB_DIR == webhook.LIB_DIR
    assert deadletters.CONFIG_FILE == webhook.CONFIG_FILE
    assert f"{webhook.PACKAGE}.deadletter" == deadletters.MODULE
    assert component("webhook").user == deadletters.USER


def test_the_host_command_drives_the_receivers_own_parser(tmp_path):
    """Every request rave-ops can send is one the receiver's command accepts."""
    from rave.webhook import deadletter

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"dead_letter_dir": str(tmp_path / "none")}))
    env = {**os.environ, "RAVE_WEBHOOK_CONFIG": str(config)}
    for action, letter, every in (
        ("list", None, False),
        ("show", "ab", False),
        ("redrive", None, True),
        ("redrive", "ab", False),
        ("discard", "ab", False),
        ("discard", None, True),
    ):
        request = deadletters.request(action, letter, every)
        result = subprocess.run(
            [sys.executable, "-m", "rave.webhook.deadletter", *request],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, (request, result.stderr)
        assert result.stdout.strip() == "no dead letters"
    assert deadletter.SUFFIX == ".letter"


def test_runner_passes_extra_environment(monkeypatch):
    seen = {}

    def fake_run(cmd, **kwargs):
        seen.update(kwargs)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(cli.subprocess, "run", fake_run)
    monkeypatch.setenv("RAVE_STAGING_ID", "15")
    cli.Runner("inventories/staging.py", []).run("ops/x.py", env={"A": "1"})
    assert seen["env"]["A"] == "1" and seen["env"]["RAVE_STAGING_ID"] == "15"
    cli.Runner("inventories/staging.py", []).run("ops/x.py")
    assert seen["env"] is None
