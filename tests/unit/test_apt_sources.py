"""Debian sources (tasks/base.py, templates/base/debian.sources.j2): main, updates, security."""

import pytest
from pydantic import ValidationError

from rave.render import render
from tasks import base
from tests.unit.conftest import make_settings


def _stanzas(text: str) -> list[dict[str, str]]:
    stanzas = []
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            stanzas.append(fields)
    return stanzas


def test_default_sources_have_bookworm_updates_and_security_signed_by_the_keyring():
    text = render("base/debian.sources.j2", **base.sources_context(make_settings()))
    assert _stanzas(text) == [
        {
            "Types": "deb",
            "URIs": "http://deb.debian.org/debian",
            "Suites": "bookworm bookworm-updates",
            "Components": "main",
            "Signed-By": "/usr/share/keyrings/debian-archive-keyring.gpg",
        },
        {
            "Types": "deb",
            "URIs": "https://security.debian.org/debian-security",
            "Suites": "bookworm-security",
            "Components": "main",
            "Signed-By": "/usr/share/keyrings/debian-archive-keyring.gpg",
        },
    ]


def test_mirrors_are_settings_without_a_trailing_slash():
    config = make_settings(
        debian_mirror="http://mirror.example.net/debian/",
        debian_security_mirror="http://mirror.example.net",
    )
    stanzas = _stanzas(render("base/debian.sources.j2", **base.sources_context(config)))
    assert [s["URIs"] for s in stanzas] == [
        "http://mirror.example.net/debian",
        "http://mirror.example.net",
    ]


@pytest.mark.parametrize("value", ["ftp://mirror.example.net/debian", "deb.debian.org/debian", ""])
def test_a_mirror_must_be_an_http_url(value):
    with pytest.raises(ValidationError, match="debian_mirror"):
        make_settings(debian_mirror=value)


def test_sources_list_is_left_as_a_comment_only():
    lines = base.SOURCES_LIST_TEXT.splitlines()
    assert lines and all(line.startswith("#") for line in lines)
    assert base.DEBIAN_SOURCES in base.SOURCES_LIST_TEXT


@pytest.mark.parametrize("days", [0, 31])
def test_security_lists_age_is_bounded(days):
    with pytest.raises(ValidationError, match="apt_security_lists_max_age_days"):
        make_settings(apt_security_lists_max_age_days=days)
