"""Claude Code Router: settings, the config generated at start, the unit and its sandbox."""

from __future__ import annotations

import json
import os
import stat

import pytest
from pydantic import ValidationError

from rave import ccrconfig
from rave.components import COMPONENTS, Route, component
from rave.render import render
from rave.sandbox import directives
from rave.settings.ccr import CcrSettings
from tasks import ccr as task
from tasks import edge
from tests.unit.conftest import make_settings

PROVIDER = {
    "name": "openrouter",
    "api_base_url": "https://openrouter.ai/api/v1/chat/completions",
    "models": ["anthropic/claude-sonnet-4"],
}


def test_default_version_is_pinned_for_node_18():
    assert CcrSettings().ccr_version == "1.0.73"
    assert CcrSettings().ccr_node_source == "debian"


def test_settings_refuse_bad_values():
    with pytest.raises(ValidationError):
        CcrSettings(ccr_version="latest")
    with pytest.raises(ValidationError):
        CcrSettings(ccr_node_source="snap")
    with pytest.raises(ValidationError):
        CcrSettings(ccr_providers=[{**PROVIDER, "api_base_url": "http://plain"}])
    with pytest.raises(ValidationError):
        CcrSettings(ccr_providers=[{**PROVIDER, "extra": 1}])


def test_app_settings_carry_no_key_and_bind_loopback():
    config = make_settings(ccr_providers=[PROVIDER], egress_proxy="http://10.0.0.1:3128")
    data = task.app_settings(config)
    assert data["host"] == "127.0.0.1"
    assert data["port"] == component("ccr").ports[0].number == 3456
    assert data["proxy_url"] == "http://10.0.0.1:3128"
    assert "api_key" not in json.dumps(data)


def test_build_merges_keys_from_the_secret():
    settings = task.app_settings(make_settings(ccr_providers=[PROVIDER]))
    built = ccrconfig.build(settings, {"openrouter": "sk-or-1", "APIKEY": "router-key"})
    assert built["HOST"] == "127.0.0.1" and built["PORT"] == 3456
    assert built["LOG"] is False  # no log files with request bodies
    assert built["Providers"][0]["api_key"] == "sk-or-1"
    assert built["APIKEY"] == "router-key"
    assert "PROXY_URL" not in built
    assert ccrconfig.build(settings, {})["Providers"][0]["api_key"] == ""
    assert "APIKEY" not in ccrconfig.build(settings, {})


def test_main_writes_a_private_file(tmp_path):
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps(task.app_settings(make_settings(ccr_providers=[PROVIDER]))))
    secret = tmp_path / "keys"
    secret.write_text('{"openrouter": "sk-or-2", "APIKEY": "router"}')
    out = tmp_path / "home" / ".claude-code-router"
    assert ccrconfig.main(["x", str(settings_file), str(secret), str(out)]) == 0
    written = out / "config.json"
    assert stat.S_IMODE(os.stat(written).st_mode) == 0o600
    assert json.loads(written.read_text())["Providers"][0]["api_key"] == "sk-or-2"
    secret.write_text('{"openrouter": "sk-or-2"}')  # keys readable at /api/config without APIKEY
    assert ccrconfig.main(["x", str(settings_file), str(secret), str(out)]) == 1
    secret.write_text('["not", "an", "object"]')
    assert ccrconfig.main(["x", str(settings_file), str(secret), str(out)]) == 1


def test_unit_reads_the_secret_at_start_never_on_the_command_line():
    config = make_settings()
    text = render("ccr/rave-ccr.service.j2", **task.unit_context(config))
    assert "Requires=rave-secrets.service" in text
    assert "After=network.target rave-secrets.service" in text
    assert "Environment=HOME=/run/rave-ccr" in text
    assert "ExecStartPre=/usr/local/sbin/rave-ccr-config /etc/rave-ccr/settings.json " in text
    assert "/run/rave/secrets/ccr/ccr_api_keys" in text
    assert "User=rave-ccr" in text
    assert "ExecStart=/usr/bin/node --require /usr/local/lib/rave-ccr/node18-compat.js " in text


@pytest.mark.parametrize("mode", ["SAFE", "FULL_PIPE"])
def test_sandbox_allows_jit_and_limits_memory(mode):
    config = make_settings(rave_mode=mode)
    lines = dict(directives(task.sandbox(config), config.profile.limits_for("ccr")))
    assert lines["MemoryDenyWriteExecute"] == "no"
    filters = [v for k, v in directives(task.sandbox(config), None) if k == "SystemCallFilter"]
    assert filters[0] == "@system-service @pkey" and filters[1].startswith("~@privileged")
    assert lines["ProtectSystem"] == "strict"
    assert lines["ReadWritePaths"] == "/run/rave-ccr"
    assert lines["MemoryMax"] == f"{config.profile.limits_for('ccr').memory_max_mb}M"


def test_edge_maps_the_ui_path():
    route = component("ccr").route
    assert route is not None and route.auth and route.upstream_path == "/ui/"


def _location(conf: str, path: str) -> str:
    start = conf.index(f"location {path} {{")
    return conf[start : conf.index("\n        }\n", start)]


def test_edge_routes_the_ui_api_behind_the_same_auth():
    from tasks import edge

    ccr = component("ccr")
    assert [r.path for r in ccr.extra_routes] == ["/api/"]
    conf = render("nginx/nginx.conf.j2", **edge.nginx_context(make_settings()))
    ui, api = _location(conf, "/ccr-ui/"), _location(conf, "/api/")
    for block in (ui, api):
        assert "auth_basic_user_file /run/rave/secrets/nginx/ccr_ui_password_hash;" in block
        # the edge's Basic credentials stay at the edge; the router checks its own X-API-Key
        assert 'proxy_set_header Authorization "";' in block
    assert "proxy_pass http://127.0.0.1:3456/ui/;" in ui
    assert "proxy_pass http://127.0.0.1:3456;" in api  # the URI passed unchanged
    # the webhook (no auth) keeps its headers as they are
    assert "Authorization" not in _location(conf, "= /webhook")


def test_route_paths_are_unique():
    from rave.components import routes

    paths = [route.path for route in routes()]
    assert len(paths) == len(set(paths)), paths
    assert "/api/" in paths and "/ccr-ui/" in paths


def _public_conf(**overrides):
    from tasks import edge

    return render("nginx/nginx.conf.j2", **edge.nginx_context(make_settings(**overrides)))


def test_edge_limits_clients_by_ipv4_address_or_ipv6_64():
    conf = _public_conf(nginx_conn_limit_per_client=17)
    # IPv6 (16 bytes): the first 8 bytes, the /64; anything else (IPv4: 4 bytes) as it is
    assert "map $binary_remote_addr $rave_client {" in conf
    assert '"~^(?s)(?<rave_prefix64>.{8}).{8}$" $rave_prefix64;' in conf
    assert "default $binary_remote_addr;" in conf
    assert "0 $rave_client;" in conf  # exempt clients (key "") are not limited
    assert "limit_req_zone $rave_limit_key zone=rave_per_client:10m" in conf
    assert "limit_conn_zone $rave_limit_key zone=rave_conn_per_client:10m;" in conf
    assert "limit_conn_status 429;" in conf
    public = conf[conf.index("listen 3002 ssl;") :]
    assert "limit_conn rave_conn_per_client 17;" in public
    assert "$binary_remote_addr zone=" not in conf, "no zone may key on the /128"


def test_settings_default_to_50_connections_per_client():
    assert make_settings().nginx_conn_limit_per_client == 50
    with pytest.raises(ValidationError):
        make_settings(nginx_conn_limit_per_client=0)


def test_grafana_metrics_are_refused_before_the_grafana_route():
    conf = _public_conf()
    refused = "location ~* ^/grafana/metrics(?:/|$) {\n            return 404;\n        }"
    assert refused in conf
    # a regex location wins over the (non-^~) prefix location /grafana/, wherever it stands
    assert "location ^~ /grafana/" not in conf and "location /grafana/ {" in conf


def test_a_component_proxying_its_own_metrics_port_refuses_the_metrics_path():
    for c in COMPONENTS:
        for route in ((c.route,) if c.route else ()) + c.extra_routes:
            if c.metrics and route.upstream_port == c.metrics.port and route.path.endswith("/"):
                assert route.path + c.metrics.path.lstrip("/") in route.refused, c.name


def test_a_refused_path_must_be_plain_and_below_its_route():
    for refused in ("/other/metrics", "/grafana/me.rics", "/grafana/(x)"):
        with pytest.raises(ValidationError):
            Route(path="/grafana/", upstream_port=3030, refused=(refused,))


def test_the_status_page_lists_only_the_routes_the_host_runs():
    """A link to a component left out would answer 502: Grafana without its package (staging),
    the router with ccr_install off."""

    def listed(**values: object) -> list[str]:
        return [route["path"] for route in edge.status_context(make_settings(**values))["routes"]]

    assert listed() == ["/grafana/", "/ccr-ui/"]
    assert listed(grafana_install=False) == ["/ccr-ui/"]
    assert listed(grafana_install=False, ccr_install=False) == []
    without_grafana = edge.status_context(make_settings(grafana_install=False))
    page = render("nginx/index.html.j2", **without_grafana)
    assert "/grafana/" not in page and 'href="/ccr-ui/"' in page
