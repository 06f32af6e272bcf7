"""nginx on a live staging host, checked from the control machine: TLS 1.3 only, headers,
routes derived from rave.components, body cap, rate limit, HTTP closed, `nginx -t` first."""

from __future__ import annotations

import re
import shlex
import socket
import ssl
import subprocess

import httpx
import pytest

from rave.components import routes
from rave.deployrun import run_deploy
from rave.observability import enabled_components
from tests.host.conftest import host_settings
from tests.host.edge_support import PORT, client, values


def _address(staging) -> str:
    return staging.address(staging.names[0])


def _s_client(staging, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"{_address(staging)}:{PORT}", *flags],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_only_tls_1_3_is_offered(staging):
    modern = _s_client(staging, "-tls1_3")
    assert modern.returncode == 0, modern.stderr
    assert "TLSv1.3" in modern.stdout
    assert re.search(r"Server Temp Key: X25519", modern.stdout), "X25519 is not the first group"
    for old in ("-tls1_2", "-tls1_1"):
        refused = _s_client(staging, old)
        assert refused.returncode != 0, f"{old} was accepted"
        assert "Cipher is (NONE)" in refused.stdout or "no protocols available" in refused.stderr


def test_tls_1_2_refused_by_a_python_client(staging):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection((_address(staging), PORT), timeout=10) as raw,
        pytest.raises(ssl.SSLError),
    ):
        context.wrap_socket(raw).close()


def test_mozilla_modern_settings_are_active(host):
    # TLS 1.3 still hands out (stateful, cache-backed) tickets with tickets off: check the
    # running configuration rather than the handshake
    active = host.check_output("nginx -T 2>/dev/null")
    for directive in (
        "ssl_protocols TLSv1.3;",
        "ssl_ecdh_curve X25519:prime256v1:secp384r1;",
        "ssl_session_tickets off;",
        "ssl_prefer_server_ciphers off;",
        "server_tokens off;",
    ):
        assert directive in active, directive


def test_plain_http_and_port_80_closed(staging):
    for port in (80, 8001, 8081, 5432):
        with pytest.raises(OSError):
            socket.create_connection((_address(staging), port), timeout=3).close()
    # plain HTTP on the TLS port gets nginx's 400, never content
    plain = httpx.get(f"http://{_address(staging)}:{PORT}/", timeout=5)
    assert plain.status_code == 400


def test_security_headers_and_status_page(staging):
    with client(staging) as https:
        response = https.get("/")
    assert response.status_code == 200
    assert staging.names[0] in response.text
    headers = response.headers
    assert headers["strict-transport-security"].startswith("max-age=63072000")
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert "default-src 'none'" in headers["content-security-policy"]
    assert headers["server"] == "nginx"  # server_tokens off: no version


def test_the_status_page_links_only_what_the_host_runs(host, staging):
    """`/` lists the routes of the components deployed here (derived from the declarations and
    the host's settings): no link to Grafana where it is not installed, and every link it
    shows answers from a running upstream, never nginx's 502."""
    settings = host_settings(host)
    expected = {
        c.route.path
        for c in enabled_components(settings)
        if c.route is not None and not c.route.methods
    }
    with client(staging) as https:
        page = https.get("/")
        links = set(re.findall(r'<a href="([^"]+)"', page.text))
        assert links == expected
        assert ("/grafana/" in links) is settings.grafana_install
        for link in links:
            answer = https.get(link)
            if answer.status_code == 401:  # behind the edge's basic auth: log in
                user = values(staging).ccr_ui_password_hash.split(":", 1)[0]
                answer = https.get(link, auth=(user, values(staging).ccr_ui_password))
            assert answer.status_code < 400, f"{link} answers {answer.status_code}"


def test_routes_are_derived_from_the_components(staging):
    paths = {route.path for route in routes()}
    assert paths == {"/webhook", "/grafana/", "/ccr-ui/", "/api/"}
    with client(staging) as https:
        for method in ("GET", "PUT", "DELETE", "PATCH"):
            response = https.request(method, "/webhook")
            assert response.status_code == 405, method
            assert response.headers["allow"] == "POST"
            assert "strict-transport-security" in response.headers
        assert https.get("/ccr-ui/").status_code == 401
        assert https.get("/api/config").status_code == 401
        password = values(staging).ccr_ui_password
        if password:
            user = values(staging).ccr_ui_password_hash.split(":", 1)[0]
            assert https.get("/ccr-ui/", auth=(user, password)).status_code != 401
        # the receiver's own endpoints are not routed
        assert https.get("/metrics").status_code == 404
        assert https.get("/healthz").status_code == 404
        assert https.get("/nothing-here").status_code == 404


def test_body_cap(staging):
    with client(staging) as https:
        response = https.post("/webhook", content=b"x" * (2 * 1024 * 1024))
    assert response.status_code == 413


def test_stub_status_on_loopback(host):
    assert "Active connections" in host.check_output("curl -sf http://127.0.0.1:8081/stub_status")
    listening = host.socket.get_listening_sockets()
    assert "tcp://127.0.0.1:8081" in listening
    assert not [s for s in listening if s.endswith(":80")]


def test_access_log_is_combined_with_timings(host, staging):
    with client(staging) as https:
        https.get("/", headers={"User-Agent": "rave-edge-test"})
    line = host.check_output("grep rave-edge-test /var/log/nginx/access.log | tail -1")
    combined = (
        r'^\S+ - \S+ \[[^\]]+\] "GET / HTTP/1\.1" 200 \d+ "[^"]*" "rave-edge-test" rt=\S+ urt=\S+$'
    )
    assert re.match(combined, line), line


def test_rate_limit_per_client(host):
    # from the host itself (not exempt): requests beyond rate + burst get 429; bounded in
    # requests and time, it stops at the first 429 (a slow machine only takes longer)
    script = (
        "import http.client, ssl, time\n"
        "c = ssl._create_unverified_context()\n"
        "conn = http.client.HTTPSConnection('127.0.0.1', 3002, context=c)\n"
        "ok = limited = 0\n"
        "deadline = time.monotonic() + 60\n"
        "while ok + limited < 5000 and time.monotonic() < deadline and not limited:\n"
        "    conn.request('GET', '/')\n"
        "    r = conn.getresponse(); r.read()\n"
        "    ok += r.status == 200; limited += r.status == 429\n"
        "print(ok, limited)\n"
    )
    ok, limited = map(int, host.check_output(f'python3 -c "{script}"').split())
    assert limited == 1 and ok >= 200, (ok, limited)  # the burst passed, then the limit hit


def test_unit_drop_ins(host):
    requires = host.check_output("systemctl show -p Requires --value nginx")
    assert "rave-secrets.service" in requires
    assert host.check_output("systemctl show -p MemoryMax --value nginx") == str(128 * 1024 * 1024)
    assert host.run("nginx -t").rc == 0
    assert not host.file("/etc/nginx/sites-enabled/default").exists


def test_a_config_failing_nginx_t_is_not_installed(host, staging):
    """A deploy whose nginx configuration fails `nginx -t` stops before reloading; the old
    configuration keeps serving. The failure is provoked by a broken include on the host."""
    before = host.file("/etc/nginx/nginx.conf").sha256sum
    broken = "/etc/nginx/modules-enabled/zz-rave-test-broken.conf"
    host.run(f"echo 'this_is_not_a_directive;' > {broken}")
    try:
        result = run_deploy(extra_args=["--data", "nginx_rate_limit_per_second=51"])
        assert not result.ok, "the deploy went on although nginx -t failed"
        log = result.stdout + result.stderr
        assert "rave-candidate.conf test failed" in log, result.log_tail(40)
        assert "Install the tested nginx configuration" not in log
        assert host.file("/etc/nginx/nginx.conf").sha256sum == before
        with client(staging) as https:
            assert https.get("/").status_code == 200
    finally:
        host.run(f"rm -f {broken}")
    assert host.run("nginx -t").rc == 0


def test_grafana_metrics_are_refused_while_grafana_is_proxied(host, staging):
    """A stand-in upstream on Grafana's port that serves /grafana/metrics too: nginx proxies
    /grafana/ to it, but answers 404 itself for /grafana/metrics in every spelling."""
    if host.socket("tcp://127.0.0.1:3030").is_listening:
        pytest.skip("something (Grafana) listens on 3030 already")
    root = "/run/rave-test-grafana"
    host.check_output(
        f"mkdir -p {root}/grafana/metrics/plugins && echo grafana-ui > {root}/grafana/index.html"
        f" && echo 'go_goroutines 1' > {root}/grafana/metrics/index.html"
        f" && cp {root}/grafana/metrics/index.html {root}/grafana/metrics/plugins/x"
    )
    unit = "rave-test-grafana"
    host.check_output(
        f"systemd-run --unit={unit} python3 -m http.server 3030 --bind 127.0.0.1 -d {root}"
    )
    try:
        assert host.check_output(
            "for i in $(seq 50); do curl -sf http://127.0.0.1:3030/grafana/metrics/ && break;"
            " sleep 0.2; done"
        ), "the stand-in serves the metrics itself"
        with client(staging) as https:
            proxied = https.get("/grafana/")
            assert proxied.status_code == 200 and "grafana-ui" in proxied.text
            for path in (
                "/grafana/metrics",
                "/grafana/metrics/",
                "/grafana/metrics?x=1",
                "/grafana/Metrics",
                "/grafana//metrics",
                "/grafana/%6detrics",
                "/grafana/./metrics",
                "/grafana/metrics/plugins/x",
            ):
                refused = https.get(path)
                assert refused.status_code == 404, path
                assert "go_goroutines" not in refused.text, path
    finally:
        host.run(f"systemctl stop {unit}")
        host.run(f"rm -rf {root}")


_KEY_PORT = 18417
# its own user and temp paths: a root nginx chowns its temp directories to its worker user, and
# the defaults (/var/lib/nginx/*) are the deployed nginx's (left to `nobody`, it cannot buffer)
_KEY_CONF = """user www-data;
pid /run/rave-test-key-nginx.pid;
error_log /run/rave-test-key-nginx.log warn;
events {{}}
http {{
    access_log off;
    client_body_temp_path /run/rave-test-key-nginx/body;
    proxy_temp_path /run/rave-test-key-nginx/proxy;
    fastcgi_temp_path /run/rave-test-key-nginx/fastcgi;
    uwsgi_temp_path /run/rave-test-key-nginx/uwsgi;
    scgi_temp_path /run/rave-test-key-nginx/scgi;
{map}
    limit_req_zone $rave_client zone=rave_test:1m rate=1r/m;
    server {{
        listen 127.0.0.1:{port};
        set_real_ip_from 127.0.0.1;
        real_ip_header X-Forwarded-For;
        location = /key {{ return 200 "$rave_client"; }}
        location = /limited {{
            # try_files answers after limit_req (a `return` would answer before it)
            limit_req zone=rave_test;
            limit_req_status 429;
            try_files /rave-nothing =204;
        }}
    }}
}}
"""


def test_clients_are_keyed_on_their_ipv4_address_or_ipv6_64(host):
    """The client-key map of the deployed nginx.conf, in a throw-away nginx on the host that
    takes the client address from X-Forwarded-For (realip sets $binary_remote_addr): the key is
    the IPv4 address or the first 8 bytes (the /64) of an IPv6 address, and two addresses of
    one /64 share one limit_req bucket."""
    deployed = host.check_output("cat /etc/nginx/nginx.conf")
    found = re.search(
        r"^    map \$binary_remote_addr \$rave_client \{\n.*?^    \}$", deployed, re.M | re.S
    )
    assert found, "no client-key map in the deployed nginx.conf"
    conf = _KEY_CONF.format(map=found.group(0), port=_KEY_PORT)
    path = "/run/rave-test-key-nginx.conf"
    before = host.check_output("stat -c '%U %n' /var/lib/nginx/*")
    host.check_output(
        f"mkdir -p /run/rave-test-key-nginx && printf %s {shlex.quote(conf)} > {path}"
        f" && nginx -t -q -c {path}"
    )
    host.check_output(f"nginx -c {path}")
    try:

        def get(location: str, client_address: str) -> str:
            return host.check_output(
                f"curl -s -o /dev/null -w '%{{http_code}}' -H 'X-Forwarded-For: {client_address}'"
                f" http://127.0.0.1:{_KEY_PORT}{location}"
                if location == "/limited"
                else f"curl -s -H 'X-Forwarded-For: {client_address}'"
                f" http://127.0.0.1:{_KEY_PORT}{location} | od -An -v -tx1 | tr -d ' \\n'"
            )

        assert get("/key", "2001:db8:1:2::5") == "20010db800010002"
        assert get("/key", "2001:db8:1:2:ffff:ffff:ffff:ffff") == "20010db800010002"
        assert get("/key", "2001:db8:1:3::5") == "20010db800010003"
        assert get("/key", "10.1.2.3") == "0a010203"
        # one bucket per /64: the second address of the /64 is limited by the first's request
        assert get("/limited", "2001:db8:1:2::5") == "204"
        assert get("/limited", "2001:db8:1:2:abcd::9") == "429"
        assert get("/limited", "2001:db8:1:3::5") == "204"
        assert get("/limited", "10.1.2.3") == "204"
        assert get("/limited", "10.1.2.4") == "204"
    finally:
        host.run("kill $(cat /run/rave-test-key-nginx.pid)")
        host.run(f"rm -rf {path} /run/rave-test-key-nginx")
    # the deployed nginx's temp directories are untouched
    assert host.check_output("stat -c '%U %n' /var/lib/nginx/*") == before


def test_concurrent_connections_are_limited_per_client(host):
    """From the host itself (not exempt): requests whose body never comes hold their
    connection; beyond nginx_conn_limit_per_client (default 50) the edge answers 429."""
    script = (
        "import socket, ssl, time\n"
        "time.sleep(5)  # a full limit_req bucket (other tests use the host's requests)\n"
        "c = ssl._create_unverified_context()\n"
        "held = []\n"
        "for _ in range(60):\n"
        "    s = c.wrap_socket(socket.create_connection(('127.0.0.1', 3002), 10))\n"
        "    s.sendall(b'POST /webhook HTTP/1.1\\r\\nHost: x\\r\\n'\n"
        "              b'Content-Length: 100\\r\\n\\r\\n')\n"
        "    held.append(s)\n"
        "time.sleep(1)\n"
        "codes = []\n"
        "for s in held:\n"
        "    s.settimeout(0.3)\n"
        "    try:\n"
        "        codes.append(s.recv(64).split()[1].decode())\n"
        "    except (TimeoutError, OSError, IndexError):\n"
        "        codes.append('held')\n"
        "print(' '.join(codes))\n"
    )
    codes = host.check_output(f"python3 -c {shlex.quote(script)}").split()
    assert codes.count("held") == 50 and codes.count("429") == 10, codes
