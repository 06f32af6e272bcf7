"""What every host needs first: identity, time, locale, apt (and its proxy), base packages."""

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Hostname
from pyinfra.operations import apt, files, server
from pyinfra.operations.util import any_changed

from rave.deploykit import (
    ensure_directory,
    ensure_file,
    ensure_group,
    ensure_packages,
    ensure_service,
    ensure_user,
    put_template,
    put_text,
    settings,
)

APT_PROXY_CONF = "/etc/apt/apt.conf.d/01rave-proxy"
APT_SNAPSHOT_CONF = "/etc/apt/apt.conf.d/02rave-snapshot"
NPM_GLOBAL_CONF = "/etc/npmrc"
DEBIAN_SOURCES = "/etc/apt/sources.list.d/debian.sources"
SOURCES_LIST = "/etc/apt/sources.list"
SOURCES_LIST_TEXT = (
    "# Managed by RAVE deploy (tasks/base.py): the Debian sources are in\n"
    f"# {DEBIAN_SOURCES} (deb822); this file stays empty.\n"
)
DEBIAN_SUITE = "bookworm"
ARCHIVE_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def sources_context(config) -> dict[str, str]:
    """debian.sources' values: the mirrors without a trailing slash (HttpUrl may add one)."""
    return {
        "mirror": str(config.debian_mirror).rstrip("/"),
        "security_mirror": str(config.debian_security_mirror).rstrip("/"),
        "suite": DEBIAN_SUITE,
        "keyring": ARCHIVE_KEYRING,
    }


def templates(config):
    """Every template this task renders, for the unit tests (name → context)."""
    proxy = config.egress_proxy or "http://proxy.invalid:3128"
    return {
        "base/apt-proxy.conf.j2": {"proxy": proxy},
        "base/npmrc.j2": {"proxy": proxy},
        "base/timesyncd.conf.j2": {"ntp_servers": config.ntp_servers},
        "base/debian.sources.j2": sources_context(config),
    }


@deploy("Base")
def base():
    config = settings()

    if host.get_fact(Hostname) != config.hostname:
        server.hostname(name=f"Set the hostname to {config.hostname}", hostname=config.hostname)

    if config.egress_proxy:
        put_template(
            "Send apt through the egress proxy",
            "base/apt-proxy.conf.j2",
            APT_PROXY_CONF,
            proxy=config.egress_proxy,
        )
        put_template(
            "Send npm through the egress proxy",
            "base/npmrc.j2",
            NPM_GLOBAL_CONF,
            proxy=config.egress_proxy,
        )
    else:
        ensure_file(name="No apt proxy", path=APT_PROXY_CONF, present=False)
        ensure_file(name="No npm proxy", path=NPM_GLOBAL_CONF, present=False)

    if config.apt_check_valid_until:
        ensure_file(name="apt checks Valid-Until", path=APT_SNAPSHOT_CONF, present=False)
    else:
        put_text(
            "apt accepts the frozen snapshot mirror (no Valid-Until check)",
            APT_SNAPSHOT_CONF,
            'Acquire::Check-Valid-Until "false";\n',
        )

    # Debian sources: main, updates and security (unattended-upgrades takes from the latter)
    sources = [
        put_template(
            "Debian sources: bookworm, bookworm-updates, bookworm-security",
            "base/debian.sources.j2",
            DEBIAN_SOURCES,
            **sources_context(config),
        ),
        put_text(
            "No sources in sources.list (debian.sources has them)", SOURCES_LIST, SOURCES_LIST_TEXT
        ),
    ]
    apt.update(name="Refresh apt (the Debian sources changed)", _if=any_changed(*sources))

    ensure_packages("Install the base packages", config.base_packages)

    files.link(
        name=f"Set the time zone to {config.timezone}",
        path="/etc/localtime",
        target=f"/usr/share/zoneinfo/{config.timezone}",
    )
    put_text("Record the time zone", "/etc/timezone", f"{config.timezone}\n")
    put_text("Set the system locale", "/etc/default/locale", f"LANG={config.locale}\n")

    timesync = put_template(
        "Configure time synchronisation",
        "base/timesyncd.conf.j2",
        "/etc/systemd/timesyncd.conf.d/rave.conf",
        ntp_servers=config.ntp_servers,
    )
    # running=None: the unit declines to start in containers (ConditionVirtualization=!container)
    ensure_service(
        name="Enable systemd-timesyncd",
        service="systemd-timesyncd",
        running=None,
        enabled=True,
    )
    ensure_service(
        name="Restart systemd-timesyncd (its settings changed)",
        service="systemd-timesyncd",
        restarted=True,
        _if=timesync.did_change,
    )

    ensure_group(name="Service group", group=config.service_user, system=True)
    ensure_user(
        name=f"Unprivileged service account {config.service_user}",
        user=config.service_user,
        group=config.service_user,
        system=True,
        shell="/usr/sbin/nologin",
        home="/nonexistent",
        create_home=False,
        ensure_home=False,
    )
    for path in ("/etc/rave", "/var/lib/rave"):
        # root-owned: tasks keep root-only state below them (a service user must not rename it)
        ensure_directory(
            name=f"Project directory {path}",
            path=path,
            user="root",
            group="root",
            mode="755",
        )
