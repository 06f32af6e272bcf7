import pytest
from pydantic import ValidationError

from rave.components import COMPONENTS
from rave.modes import PROFILES, Mode
from rave.validation import DataLayer, HostDataError, validate_host
from tests.unit.conftest import SAMPLE_KEY, make_settings


def test_defaults_validate_and_pick_the_safe_profile():
    config = make_settings()
    assert config.rave_mode is Mode.SAFE
    assert config.profile is PROFILES[Mode.SAFE]


def test_full_pipe_is_chosen_by_one_setting():
    config = make_settings(rave_mode="FULL_PIPE")
    assert config.profile.prometheus_retention_time == "7d"
    assert config.profile.limits_for("prometheus").memory_max_mb == 512


@pytest.mark.parametrize("mode", list(Mode))
def test_each_profile_limits_every_service_component(mode):
    profile = PROFILES[mode]
    limited = {c.name for c in COMPONENTS if c.name != "sshd"}
    assert limited <= set(profile.limits), limited - set(profile.limits)


def test_safe_fits_a_two_gigabyte_host():
    total = sum(limit.memory_max_mb for limit in PROFILES[Mode.SAFE].limits.values())
    assert total < 2048


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("rave_mode", "FAST", "rave_mode"),
        ("timezone", "Mars/Olympus", "unknown time zone"),
        ("egress_proxy", "proxy:3128", "egress_proxy"),
        ("operator_keys", [], "operator_keys"),
        ("operator_keys", ["ssh-rsa AAAAB3Nza"], "not an ssh-ed25519"),
        ("hostname", "Bad_Name", "hostname"),
    ],
)
def test_bad_values_are_refused_with_the_field_named(field, value, fragment):
    with pytest.raises(ValidationError) as error:
        make_settings(**{field: value})
    assert fragment in str(error.value)


def test_unknown_setting_names_host_field_and_file():
    layers = [
        DataLayer("inventories/x.py (host h1)", {"ssh_user": "agent", "_sudo": True}),
        DataLayer("group_data/all.py", {"webhok_port": 1, "operator_keys": [SAMPLE_KEY]}),
    ]
    with pytest.raises(HostDataError) as error:
        validate_host("h1", layers)
    message = str(error.value)
    assert "host h1" in message
    assert "webhok_port" in message
    assert "group_data/all.py" in message
    assert "unknown setting" in message


def test_more_specific_layer_wins_and_connector_keys_pass_through():
    layers = [
        DataLayer("inventory (host h1)", {"rave_mode": "FULL_PIPE", "ssh_port": 2222}),
        DataLayer("group_data/all.py", {"rave_mode": "SAFE", "operator_keys": [SAMPLE_KEY]}),
    ]
    assert validate_host("h1", layers).rave_mode is Mode.FULL_PIPE
