"""Hardening settings: defaults are safe, a lock-out is refused before any host is touched."""

import pytest
from pydantic import ValidationError

from rave.settings.hardening import DEFAULT_SYSCTL
from tests.unit.conftest import make_settings


def test_defaults_validate():
    config = make_settings()
    assert config.sshd_permit_root_login == "no"
    assert config.sshd_allow_groups == ["rave-ssh"]
    assert "curve25519-sha256" in config.sshd_kex_algorithms
    assert "sntrup761x25519-sha512@openssh.com" in config.sshd_kex_algorithms
    assert {"aes256-gcm@openssh.com", "aes128-gcm@openssh.com"} <= set(config.sshd_ciphers)
    assert all(mac.endswith("-etm@openssh.com") for mac in config.sshd_macs)
    assert config.sysctl_desired == DEFAULT_SYSCTL


def test_every_hardening_field_has_a_description():
    from rave.settings.hardening import HardeningSettings

    for name, field in HardeningSettings.model_fields.items():
        assert field.description, name


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("sshd_ciphers", ["chacha20-poly1305@openssh.com"], "paramiko"),
        ("sshd_kex_algorithms", ["sntrup761x25519-sha512@openssh.com"], "paramiko"),
        ("sshd_macs", ["umac-128-etm@openssh.com"], "paramiko"),
        ("sshd_ciphers", ["aes256-gcm@openssh.com aes128-ctr"], "single sshd token"),
        ("sshd_ciphers", ["aes256-gcm@openssh.com", "aes256-gcm@openssh.com"], "duplicate"),
        ("sshd_allow_groups", [], "sshd_allow_groups"),
        ("sshd_permit_root_login", "yes", "sshd_permit_root_login"),
        ("firewall_extra_tcp_ports", [0], "not a TCP port"),
        ("firewall_monitoring_sources", ["10.0.0.300"], "firewall_monitoring_sources"),
        ("firewall_revert_seconds", 5, "firewall_revert_seconds"),
        ("sysctl_extra", {"kernel.sysrq; reboot": "1"}, "not a sysctl key"),
        ("sysctl_extra", {"kernel.sysrq": "1; reboot"}, "unexpected sysctl value"),
    ],
)
def test_bad_values_are_refused(field, value, fragment):
    with pytest.raises(ValidationError) as error:
        make_settings(**{field: value})
    assert fragment in str(error.value)


def test_an_unknown_algorithm_is_left_to_sshd_t_on_the_host():
    # syntax is checked here; whether sshd knows the name is `sshd -t`'s job (tests/host)
    config = make_settings(sshd_ciphers=["aes256-gcm@openssh.com", "no-such-cipher@example.org"])
    assert "no-such-cipher@example.org" in config.sshd_ciphers


def test_networks_are_normalised_and_ports_deduplicated():
    config = make_settings(
        firewall_monitoring_sources=["192.0.2.7", "2001:db8::1/64"],
        firewall_extra_tcp_ports=[8443, 8443, 443],
    )
    assert config.firewall_monitoring_sources == ["192.0.2.7/32", "2001:db8::/64"]
    assert config.firewall_extra_tcp_ports == [443, 8443]


def test_sysctl_extra_wins_over_the_baseline():
    config = make_settings(sysctl_extra={"kernel.yama.ptrace_scope": "3", "vm.swappiness": "10"})
    assert config.sysctl_desired["kernel.yama.ptrace_scope"] == "3"
    assert config.sysctl_desired["vm.swappiness"] == "10"
