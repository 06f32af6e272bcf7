"""Small helpers shared by the task modules (pyinfra operations with the project's conventions)."""

from __future__ import annotations

from io import StringIO
from typing import Any

from pyinfra import host
from pyinfra.operations import apt, files

from rave.render import render
from rave.settings import HostSettings
from rave.validation import inventory_layers, validate_host

_settings_cache: dict[str, HostSettings] = {}


def settings() -> HostSettings:
    """The current host's validated settings (config.py already refused invalid data)."""
    if host.name not in _settings_cache:
        layers = inventory_layers(host.inventory, host, "inventory")
        _settings_cache[host.name] = validate_host(host.name, layers)
    return _settings_cache[host.name]


def ensure_packages(name: str, packages: list[str] | tuple[str, ...]) -> Any:
    """Debian packages without recommends; retried since apt's lock may be busy at boot."""
    return apt.packages(
        name=name,
        packages=list(packages),
        no_recommends=True,
        update=True,
        cache_time=24 * 3600,
        _retries=3,
        _retry_delay=10,
    )


def put_text(
    name: str,
    dest: str,
    text: str,
    *,
    user: str = "root",
    group: str = "root",
    mode: str = "644",
) -> Any:
    """Upload text rendered on the control machine (idempotent: compared by checksum)."""
    return files.put(
        name=name,
        src=StringIO(text),
        dest=dest,
        user=user,
        group=group,
        mode=mode,
        create_remote_dir=True,
    )


def put_template(
    name: str,
    template: str,
    dest: str,
    *,
    user: str = "root",
    group: str = "root",
    mode: str = "644",
    **context: Any,
) -> Any:
    return put_text(name, dest, render(template, **context), user=user, group=group, mode=mode)


def install_host_script(name: str, src: str, dest: str) -> Any:
    """A root-owned executable from files/ (mode as a string: mode=True is never idempotent)."""
    return files.put(
        name=name,
        src=src,
        dest=dest,
        user="root",
        group="root",
        mode="755",
        create_remote_dir=True,
    )
