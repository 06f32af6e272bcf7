"""The service hosts' firewall opens the MONITORING ports to the inventory's monitoring host."""

from rave import hardening as h
from rave.components import monitoring_ports
from tests.unit.conftest import make_settings


def test_the_derived_monitoring_address_is_a_firewall_source():
    text = h.nftables_text(make_settings(monitoring_addresses=["10.0.0.9"]))
    ports = ", ".join(str(p) for p in monitoring_ports())
    assert "elements = { 10.0.0.9/32 }" in text
    assert f"ip saddr @monitoring_v4 tcp dport {{ {ports} }} accept" in text


def test_an_address_already_covered_by_a_listed_network_is_not_added_twice():
    config = make_settings(
        firewall_monitoring_sources=["10.0.0.0/24"], monitoring_addresses=["10.0.0.9"]
    )
    assert [str(n) for n in h.monitoring_sources(config)] == ["10.0.0.0/24"]
    assert "elements = { 10.0.0.0/24 }" in h.nftables_text(config)


def test_without_a_monitoring_host_nothing_is_opened():
    assert h.monitoring_sources(make_settings()) == []
