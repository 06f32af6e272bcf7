"""Runs last (file name): a second deploy of the whole stack changes nothing."""


def test_second_deploy_changes_nothing(staging):
    result = staging.deploy()
    assert result.ok, f"re-deploy failed: {result.summary()}\n{result.log_tail(80)}"
    changed = result.changed_operations()
    assert not changed, f"a re-deploy changed {len(changed)} operation(s):\n  " + "\n  ".join(
        changed
    )
