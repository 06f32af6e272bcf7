"""rave.deployrun against the installed pyinfra: its --json results and the change count."""

import json

from rave.deployrun import failures_from_log, parse_results, run_deploy


def test_counts_changed_operations_of_a_real_local_run(tmp_path):
    existing = tmp_path / "exists"
    existing.mkdir()
    (tmp_path / "deploy.py").write_text(
        "from pyinfra.operations import files, server\n"
        f"files.directory(name='Already there', path={str(existing)!r})\n"
        "server.shell(name='Always runs', commands=['true'])\n"
    )
    result = run_deploy("@local", ["deploy.py"], cwd=tmp_path, timeout=120)
    assert result.ok, result.log_tail()
    assert result.parsed
    assert result.changed == 1
    assert result.changed_operations() == ["Always runs on @local"]
    names = [op.name for op in result.operations]
    assert names == ["Already there", "Always runs"]


def test_a_failing_run_is_not_ok(tmp_path):
    (tmp_path / "deploy.py").write_text(
        "from pyinfra.operations import server\nserver.shell(name='Fails', commands=['false'])\n"
    )
    result = run_deploy("@local", ["deploy.py"], cwd=tmp_path, timeout=120)
    assert not result.ok
    assert result.returncode != 0
    assert "no results" in result.summary() or result.errors == 1


def test_parse_results_takes_the_results_document_among_other_output():
    payload = {
        "plan": [],
        "results": {
            "operations": [{"name": "x", "success": ["h1"], "error": [], "no_change": ["h2"]}],
            "totals": {},
            "failed_hosts": [],
        },
    }
    stdout = "some print from a deploy\n{not json\n" + json.dumps(payload) + "\n"
    assert parse_results(stdout) == payload["results"]
    assert parse_results("nothing here\n") is None
    assert parse_results(json.dumps({"plan": [], "results": None})) is None


def test_a_failed_run_names_the_operation_the_host_and_the_error(tmp_path):
    (tmp_path / "deploy.py").write_text(
        "from pyinfra.operations import server\n"
        "server.shell(name='Works', commands=['true'])\n"
        "server.shell(name='Breaks here', commands=['echo the-cause >&2; exit 3'])\n"
    )
    result = run_deploy("@local", ["deploy.py"], cwd=tmp_path, timeout=120)
    assert not result.ok
    summary = result.summary()
    assert "Breaks here on @local: Error" in summary, summary
    assert "Works on @local" not in summary


def test_failures_from_log_keeps_order_and_skips_repeats():
    log = (
        "--> Starting operation: Restore database\n"
        "    [h2] Unexpected error in Python callback: RuntimeError('restore failed')\n"
        "    [h2] Error: executed 0 commands\n"
        "    [h1] Success\n"
        "--> Starting operation: Next\n"
        "    [h3] Error: executed 0 commands\n"
        "    [h3] Error: executed 0 commands\n"
    )
    assert failures_from_log(log) == [
        "Restore database on h2: Unexpected error in Python callback: "
        "RuntimeError('restore failed')",
        "Restore database on h2: Error: executed 0 commands",
        "Next on h3: Error: executed 0 commands",
    ]
