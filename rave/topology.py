"""Which host plays which part, derived from the inventory's groups (never typed twice).

Groups: `rave` holds the service hosts; an optional `monitoring` group holds the monitoring
host(s). From that, each host gets derived settings (rave.settings.topology):

- a service host, when a monitoring host exists: ``monitoring_addresses`` (the firewall opens the
  MONITORING ports of rave.components to exactly these; the exporters then listen beyond
  loopback, rave/observability.py listen_address);
- a monitoring host: ``monitoring_scrape_hosts`` (service host name -> address), whose exporters
  its Prometheus scrapes; ``monitoring_role`` true.

Without a `monitoring` group every host monitors itself, as a single host does.
An address is the host's ``ssh_hostname`` (or its name), resolved to an IP address on the
control machine, since nftables and the listeners need addresses, not names.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

SERVICE_GROUP = "rave"
MONITORING_GROUP = "monitoring"
# what a monitoring-only host runs (its deploy skips the service tasks); its backup holds its
# own files (no database: tasks/backup.py)
MONITORING_HOST_COMPONENTS = frozenset(
    {"sshd", "prometheus", "alertmanager", "node_exporter", "grafana", "backup"}
)


def host_address(host: Any) -> str:
    """The IP address others reach this host on (from ssh_hostname or the host's name)."""
    name = str(host.data.get("ssh_hostname") or host.name)
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    try:
        info = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except OSError as error:
        raise ValueError(f"cannot resolve {name!r} to an address: {error}") from None
    return str(info[0][4][0])


def _group(inventory: Any, name: str) -> list[Any]:
    try:
        return list(inventory.get_group(name))
    except Exception:  # pyinfra raises NoGroupError for an absent group
        return []


def monitoring_hosts(inventory: Any) -> list[Any]:
    return _group(inventory, MONITORING_GROUP)


def service_hosts(inventory: Any) -> list[Any]:
    """Hosts in `rave` that are not monitoring hosts."""
    monitors = {h.name for h in monitoring_hosts(inventory)}
    return [h for h in _group(inventory, SERVICE_GROUP) if h.name not in monitors]


def is_monitoring_host(inventory: Any, host: Any) -> bool:
    return any(h.name == host.name for h in monitoring_hosts(inventory))


def derived_data(inventory: Any, host: Any) -> dict[str, Any]:
    """The settings this host derives from the inventory (lowest precedence: data may override)."""
    monitors = monitoring_hosts(inventory)
    if not monitors:
        return {}
    if is_monitoring_host(inventory, host):
        return {
            "monitoring_role": True,
            "host_address": host_address(host),
            "monitoring_scrape_hosts": {h.name: host_address(h) for h in service_hosts(inventory)},
        }
    return {
        "host_address": host_address(host),
        "monitoring_addresses": sorted({host_address(h) for h in monitors}),
    }
