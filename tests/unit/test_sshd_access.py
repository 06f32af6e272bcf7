"""Who may log in and forward what: the staged SSH access change and the tunnels to the UIs.

The daemon's side (a refused login reverted, the tunnels) is proven live in
tests/host/test_ssh_access.py; here: what is rendered, decided and refused before connecting.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rave import hardening as h
from rave.components import COMPONENTS, Exposure, Port, operator_ui_ports
from rave.observability import enabled_components
from rave.validation import (
    DataLayer,
    connection_input,
    deploy_login_problems,
    login_checks_apply,
    settings_input,
    validate_host,
)
from tests.unit.conftest import SAMPLE_KEY, make_settings

REPO = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).with_name("pyinfra")


def _match_block(text: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Match "))
    return lines[start:]


def _directives(lines: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in lines:
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            key, _, value = stripped.partition(" ")
            found.setdefault(key, value)
    return found


@pytest.mark.parametrize("grafana", [True, False])
def test_permitopen_is_the_ui_ports_of_the_components_this_host_runs(grafana):
    settings = make_settings(grafana_install=grafana)
    text = h.sshd_config_text(settings)
    block = _match_block(text)
    assert block[0] == f"Match Group {settings.sshd_allow_groups[0]}"
    inside = _directives(block[1:])
    expected = sorted(
        p.number for c in enabled_components(settings) for p in c.ports if p.operator_ui
    )
    assert inside["PermitOpen"].split() == [f"127.0.0.1:{port}" for port in expected]
    assert (3030 in expected) is grafana
    assert 9090 in expected and 9093 in expected
    assert inside["AllowTcpForwarding"] == "local"
    assert inside["DisableForwarding"] == "no"
    for off in ("AllowAgentForwarding", "AllowStreamLocalForwarding", "X11Forwarding"):
        assert inside[off] == "no", off
    assert inside["PermitTunnel"] == "no"
    assert inside["PermitListen"] == "none"


def test_outside_the_operator_group_every_forwarding_stays_off():
    text = h.sshd_config_text(make_settings())
    global_part = _directives(text.split("\nMatch ", 1)[0].splitlines())
    assert global_part["DisableForwarding"] == "yes"
    assert global_part["AllowTcpForwarding"] == "no"
    assert global_part["PermitOpen"] == "none"
    assert global_part["PermitListen"] == "none"
    assert global_part["AllowAgentForwarding"] == "no"
    # nothing after the Match block but its own indented lines (a Match runs to the end)
    assert all(line.startswith("\t") or not line.strip() for line in _match_block(text)[1:])


def test_the_ui_ports_are_loopback_ports_of_declared_components():
    declared = {p.number: p for c in COMPONENTS for p in c.ports}
    assert set(operator_ui_ports()) == {9090, 9093, 3030}
    for port in operator_ui_ports():
        assert declared[port].exposure is Exposure.LOOPBACK
    with pytest.raises(ValueError, match="public port"):
        Port(number=443, exposure=Exposure.PUBLIC, purpose="x", operator_ui=True)


def test_a_monitoring_host_forwards_only_to_what_it_runs():
    settings = make_settings(monitoring_role=True)
    ports = h.tunnel_ports(settings)
    names = {c.name for c in enabled_components(settings)}
    assert ports == sorted(
        p.number for c in COMPONENTS if c.name in names for p in c.ports if p.operator_ui
    )


def test_authorized_keys_text_is_exactly_the_operator_keys():
    other = SAMPLE_KEY.replace("EXAMPLEx", "EXAMPLEy")
    settings = make_settings(operator_keys=[SAMPLE_KEY, other])
    assert h.authorized_keys_text(settings) == f"{SAMPLE_KEY}\n{other}\n"


def _state(settings, **changes):
    text = h.sshd_config_text(settings)
    state = {
        "config": h.sha256(text),
        "group": "agent",
        "dir": "agent agent 700 directory",
        "keys": "agent agent 600 regular file",
        "keys_sha": h.sha256(h.authorized_keys_text(settings)),
        **changes,
    }
    return state, text


@pytest.mark.parametrize(
    "changes",
    [
        {"config": "0" * 64},
        {"keys_sha": "0" * 64},
        {"keys_sha": None, "keys": "agent agent 777 symbolic link"},
        {"keys": "root agent 600 regular file"},
        {"keys": "agent agent 644 regular file"},
        {"dir": "agent agent 755 directory"},
        {"dir": None, "keys": None, "keys_sha": None},
    ],
)
def test_any_difference_in_config_or_keys_stages_a_change(changes):
    settings = make_settings()
    state, text = _state(settings)
    assert h.ssh_access_current(state, settings, text)
    changed, _ = _state(settings, **changes)
    assert not h.ssh_access_current(changed, settings, text)


def test_keys_only_runs_ignore_the_config():
    settings = make_settings()
    state, _ = _state(settings, config="0" * 64)
    assert h.ssh_access_current(state, settings, None)


def test_ssh_access_fact_parses_its_output():
    fact = h.SshAccessState()
    assert "getent passwd agent" in fact.command(user="agent")
    parsed = fact.process(
        [
            "config=abc",
            "group=agent",
            "dir=agent agent 700 directory",
            "keys=",
        ]
    )
    assert parsed == {
        "config": "abc",
        "group": "agent",
        "dir": "agent agent 700 directory",
        "keys": None,
        "keys_sha": None,
    }


# --- the deploy's own login, refused before connecting ----------------------------------------


@pytest.fixture
def deploy_key(tmp_path) -> tuple[Path, str]:
    path = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    public = " ".join(path.with_suffix(".pub").read_text().split()[:2]) + " deploy@ci"
    return path, public


def _problems(host_data: dict, group_data: dict) -> list[str]:
    layers = [
        DataLayer("inventories/prod.py (host rave-prod-1)", host_data),
        DataLayer("group_data/prod.py", group_data),
    ]
    settings = validate_host("rave-prod-1", layers)
    _, origin = settings_input(layers)
    login, where = connection_input(layers)
    return deploy_login_problems("rave-prod-1", settings, origin, login, where)


def test_the_deploy_key_in_operator_keys_passes(deploy_key):
    path, public = deploy_key
    host_data = {"ssh_user": "agent", "ssh_key": str(path)}
    assert _problems(host_data, {"operator_keys": [SAMPLE_KEY, public]}) == []


def test_operator_keys_without_the_deploy_key_is_refused_naming_the_field(deploy_key):
    path, _ = deploy_key
    problems = _problems(
        {"ssh_user": "agent", "ssh_key": str(path)}, {"operator_keys": [SAMPLE_KEY]}
    )
    assert len(problems) == 1
    assert "operator_keys in group_data/prod.py" in problems[0]
    assert f"ssh_key in inventories/prod.py (host rave-prod-1) ({path})" in problems[0]


def test_the_public_key_is_derived_when_no_pub_file_lies_next_to_it(deploy_key):
    path, public = deploy_key
    path.with_suffix(".pub").unlink()
    host_data = {"ssh_user": "agent", "ssh_key": str(path)}
    assert _problems(host_data, {"operator_keys": [public]}) == []
    assert _problems(host_data, {"operator_keys": [SAMPLE_KEY]})


def test_an_unreadable_key_is_refused(tmp_path):
    missing = tmp_path / "nope"
    problems = _problems(
        {"ssh_user": "agent", "ssh_key": str(missing)}, {"operator_keys": [SAMPLE_KEY]}
    )
    assert problems and "cannot be read" in problems[0]


def test_another_deploy_user_is_refused_naming_ssh_user(deploy_key):
    path, public = deploy_key
    problems = _problems(
        {"ssh_user": "deployer", "ssh_key": str(path)}, {"operator_keys": [public]}
    )
    assert len(problems) == 1
    assert "ssh_user in inventories/prod.py (host rave-prod-1) is 'deployer'" in problems[0]
    assert "sshd_allow_groups" in problems[0]


def test_a_changed_operator_user_is_refused_for_the_old_login(deploy_key):
    path, public = deploy_key
    problems = _problems(
        {"ssh_user": "agent", "ssh_key": str(path)},
        {"operator_keys": [public], "operator_user": "ops"},
    )
    assert problems and "operator_user ('ops', in group_data/prod.py)" in problems[0]


def test_root_is_refused_unless_sshd_still_admits_root(deploy_key):
    path, public = deploy_key
    host_data = {"ssh_user": "root", "ssh_key": str(path)}
    problems = _problems(host_data, {"operator_keys": [public]})
    assert len(problems) == 2
    assert "sshd_permit_root_login in defaults (no file sets it) is 'no'" in problems[0]
    assert "sshd_allow_groups in defaults (no file sets it) (rave-ssh)" in problems[1]
    admitted = {
        "operator_keys": [public],
        "sshd_permit_root_login": "prohibit-password",
        "sshd_allow_groups": ["rave-ssh", "root"],
    }
    assert _problems(host_data, admitted) == []


def test_an_unset_ssh_user_is_refused():
    problems = _problems({}, {"operator_keys": [SAMPLE_KEY]})
    assert problems and "ssh_user is not set" in problems[0]


def test_local_connectors_are_not_ssh_logins():
    layers = [DataLayer("group_data/all.py", {"operator_keys": [SAMPLE_KEY]})]
    settings = validate_host("local", layers)
    assert deploy_login_problems("@local", settings, {}, {}, {}) == []


def test_only_the_bootstrap_hand_over_is_exempt():
    assert login_checks_apply(["deploy.py"])
    assert login_checks_apply([])
    assert login_checks_apply(["ops/operator_keys.py"])
    assert login_checks_apply([str(REPO / "deploy.py"), "ops/bootstrap.py"])
    assert not login_checks_apply(["ops/bootstrap.py"])
    assert not login_checks_apply([str(Path("ops/bootstrap.py").resolve())])


def test_the_pyinfra_cli_refuses_before_connecting(tmp_path, deploy_key):
    """The real CLI with the project's config.py: a host whose operator_keys drop the deploy's
    key is refused (exit 2, naming the field) before any connection is tried."""
    path, _ = deploy_key
    project = tmp_path / "project"
    (project / "group_data").mkdir(parents=True)
    (project / "config.py").write_text((REPO / "config.py").read_text())
    (project / "group_data" / "all.py").write_text(f'operator_keys = ["{SAMPLE_KEY}"]\n')
    # a documentation address: nothing answers there, a connection attempt would hang
    (project / "inventory.py").write_text(
        f'rave = [("203.0.113.77", {{"ssh_user": "agent", "ssh_key": "{path}"}})]\n'
    )
    result = subprocess.run(
        [str(PYINFRA), "-y", "inventory.py", "exec", "--", "true"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Refusing to connect" in result.stderr
    assert "operator_keys in group_data/all.py" in result.stderr
    assert "Connecting" not in result.stdout + result.stderr
