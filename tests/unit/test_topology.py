"""Roles and addresses derived from the inventory's groups (rave/topology.py)."""

import pytest
from pyinfra.api import Inventory

from rave.topology import derived_data, is_monitoring_host, service_hosts
from rave.validation import HostDataError, inventory_layers, validate_inventory
from tests.unit.conftest import SAMPLE_KEY


def _inventory(monitoring: bool = True, mon_address: str = "10.0.0.9") -> Inventory:
    rave = [("svc-1", {"ssh_hostname": "10.0.0.1"}), ("svc-2", {"ssh_hostname": "10.0.0.2"})]
    groups = {"rave": (rave, {})}
    hosts = list(rave)
    if monitoring:
        groups["monitoring"] = ([("mon-1", {"ssh_hostname": mon_address})], {})
        hosts.append(("mon-1", {"ssh_hostname": mon_address}))
    return Inventory((hosts, {"operator_keys": [SAMPLE_KEY]}), **groups)


def test_without_a_monitoring_group_nothing_is_derived():
    inventory = _inventory(monitoring=False)
    assert all(derived_data(inventory, h) == {} for h in inventory)
    settings = validate_inventory(inventory, "inv.py")
    assert settings["svc-1"].monitoring_addresses == []
    assert not settings["svc-1"].monitoring_role


def test_service_hosts_learn_the_monitoring_address_once_typed():
    inventory = _inventory()
    settings = validate_inventory(inventory, "inv.py")
    for name in ("svc-1", "svc-2"):
        assert settings[name].monitoring_addresses == ["10.0.0.9"]
        assert not settings[name].monitoring_role
    assert settings["svc-2"].host_address == "10.0.0.2"


def test_the_monitoring_host_learns_every_service_host():
    inventory = _inventory()
    mon = inventory.get_host("mon-1")
    assert is_monitoring_host(inventory, mon)
    assert [h.name for h in service_hosts(inventory)] == ["svc-1", "svc-2"]
    settings = validate_inventory(inventory, "inv.py")["mon-1"]
    assert settings.monitoring_role
    assert settings.monitoring_scrape_hosts == {"svc-1": "10.0.0.1", "svc-2": "10.0.0.2"}
    assert settings.monitoring_addresses == []


def test_explicit_data_wins_over_the_derived_layer():
    inventory = _inventory()
    layers = inventory_layers(inventory, inventory.get_host("svc-1"), "inv.py")
    assert layers[-1].source.startswith("the inventory's groups")


def test_an_unresolvable_monitoring_host_is_refused_before_connecting():
    with pytest.raises(HostDataError, match="cannot resolve"):
        validate_inventory(_inventory(mon_address="no-such-host.invalid"), "inv.py")
