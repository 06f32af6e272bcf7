import pytest

from rave.settings import HostSettings

SAMPLE_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEEXAMPLEEXAMPLEEXAMPLEEXAMPLEEXAMPLEx ops@example"
)


def make_settings(**overrides) -> HostSettings:
    data = {"hostname": "rave-test-1", "operator_keys": [SAMPLE_KEY], **overrides}
    return HostSettings.model_validate(data)


@pytest.fixture
def sample_settings() -> HostSettings:
    return make_settings(egress_proxy="http://10.0.0.1:3128")
