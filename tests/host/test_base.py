"""tasks/base.py on the live staging host."""


def test_hostname_is_the_inventory_name(host):
    assert host.check_output("hostname") == host.backend.get_hostname()


def test_apt_goes_through_the_egress_proxy(host, staging):
    conf = host.file("/etc/apt/apt.conf.d/01rave-proxy")
    assert conf.exists and conf.mode == 0o644
    assert f"10.213.{staging.instance.id}.1:3128" in conf.content_string


def test_npm_uses_the_proxy_too(host, staging):
    assert f"10.213.{staging.instance.id}.1:3128" in host.file("/etc/npmrc").content_string


def test_base_packages_installed(host):
    for package in ("ca-certificates", "curl", "sudo", "age", "systemd-timesyncd"):
        assert host.package(package).is_installed, package


def test_time_zone_and_locale(host):
    assert host.check_output("readlink /etc/localtime") == "/usr/share/zoneinfo/UTC"
    assert host.file("/etc/default/locale").content_string == "LANG=C.UTF-8\n"


def test_time_sync_enabled_with_our_servers(host):
    assert host.service("systemd-timesyncd").is_enabled
    conf = host.file("/etc/systemd/timesyncd.conf.d/rave.conf").content_string
    assert "NTP=0.debian.pool.ntp.org" in conf


def test_unprivileged_service_account(host):
    account = host.user("rave")
    assert account.exists
    assert account.uid < 1000
    assert account.shell == "/usr/sbin/nologin"
    assert host.file("/var/lib/rave").user == "root"
    assert not host.file("/etc/sudoers.d/rave").exists
