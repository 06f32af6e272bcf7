"""Claude Code Router on a live staging host: a sandboxed unit on loopback, its web UI under
/ccr-ui/ behind the edge's basic auth, its keys only in tmpfs."""

from __future__ import annotations

import json
import shlex

from rave.components import component
from rave.settings.ccr import CcrSettings
from tests.host.edge_support import client, values, wait_for

UNIT = component("ccr").unit
PORT = component("ccr").ports[0].number
RUNTIME_CONFIG = "/run/rave-ccr/.claude-code-router/config.json"


def _listening(host) -> list[str]:
    out = host.check_output(f"ss -Hltn 'sport = :{PORT}'")
    return sorted({line.split()[3] for line in out.splitlines() if line.strip()})


def test_unit_active_sandboxed_and_limited(host):
    wait_for(lambda: host.service(UNIT).is_running, timeout=60)
    assert host.service(UNIT).is_enabled
    show = dict(
        line.split("=", 1)
        for line in host.check_output(
            f"systemctl show {UNIT} -p User -p NoNewPrivileges -p ProtectSystem -p MemoryMax "
            "-p Requires -p After -p MemoryDenyWriteExecute"
        ).splitlines()
    )
    assert show["User"] == "rave-ccr"
    assert show["NoNewPrivileges"] == "yes"
    assert show["ProtectSystem"] == "strict"
    assert show["MemoryDenyWriteExecute"] == "no"  # V8's JIT
    assert "rave-secrets.service" in show["Requires"]
    assert "rave-secrets.service" in show["After"]
    assert int(show["MemoryMax"]) > 0
    exposure = host.check_output(f"systemd-analyze security {UNIT}.service | tail -1")
    score = float(exposure.rsplit(":", 1)[1].split()[0])
    assert score <= 3.5, exposure


def test_runs_the_pinned_version_on_debian_node(host):
    node = host.check_output("node --version")
    assert node.startswith("v18."), node
    package = json.loads(
        host.check_output(
            "cat /opt/rave/ccr/node_modules/@musistudio/claude-code-router/package.json"
        )
    )
    assert package["version"] == CcrSettings().ccr_version


def test_listens_on_loopback_only(host):
    wait_for(lambda: _listening(host) != [], timeout=60)
    assert _listening(host) == [f"127.0.0.1:{PORT}"]


def test_ui_requires_credentials(staging):
    secrets = values(staging)
    assert secrets.ccr_ui_password, "the staging secrets carry the UI password"
    user = secrets.ccr_ui_password_hash.split(":", 1)[0]
    with client(staging) as https:
        assert https.get("/ccr-ui/").status_code == 401
        assert (
            https.get("/ccr-ui/", auth=(user, "wrong-" + secrets.ccr_ui_password)).status_code
            == 401
        )

        def ui_served() -> bool:
            return https.get("/ccr-ui/", auth=(user, secrets.ccr_ui_password)).status_code == 200

        wait_for(ui_served, timeout=60)
        page = https.get("/ccr-ui/", auth=(user, secrets.ccr_ui_password))
        assert page.headers["content-type"].startswith("text/html")
        assert "<html" in page.text.lower() and "<script" in page.text.lower()


def test_ui_api_calls_are_routed_behind_the_same_auth(staging):
    """The UI (under /ccr-ui/) calls the absolute path /api/: routed, and only with the password."""
    secrets = values(staging)
    user = secrets.ccr_ui_password_hash.split(":", 1)[0]
    good = (user, secrets.ccr_ui_password)
    with client(staging) as https:
        page = https.get("/ccr-ui/", auth=good).text
        assert '"/api' in page  # the bundled UI's API base (class with baseUrl="/api")
        for path in ("/api/config", "/api/transformers"):
            refused = https.get(path)
            assert refused.status_code == 401, path
            assert refused.headers["www-authenticate"].startswith("Basic"), path
            assert "nginx" in refused.text  # the edge refused it, not the router
            assert https.get(path, auth=(user, "wrong-" + secrets.ccr_ui_password)).status_code == (
                401
            )
        wait_for(lambda: https.get("/api/config", auth=good).status_code == 200, timeout=60)
        config = https.get("/api/config", auth=good, headers={"Accept": "application/json"})
        assert config.headers["content-type"].startswith("application/json")
        # the router's own configuration, as the UI shows it
        assert config.json()["PORT"] == PORT and config.json()["HOST"] == "127.0.0.1"
        transformers = https.get("/api/transformers", auth=good).json()["transformers"]
        assert transformers and all("name" in t for t in transformers)


def test_keys_only_in_tmpfs_never_in_ps(host, staging):
    config = host.file(RUNTIME_CONFIG)
    assert config.exists and config.user == "rave-ccr" and config.mode == 0o600
    assert host.check_output(f"findmnt -n -o FSTYPE --target {RUNTIME_CONFIG}") == "tmpfs"
    on_disk = host.check_output(
        "find / -xdev \\( -path /proc -o -path /sys -o -path /run \\) -prune -o "
        "-path '*claude-code-router*' -name 'config.json' -print 2>/dev/null || true"
    )
    assert on_disk == ""
    secrets = values(staging)
    ps = host.check_output("ps -eo args")
    for key in secrets.ccr_api_keys.values():
        assert key not in ps
        assert (
            host.run(
                f"grep -rlF -- {shlex.quote(key)} /etc /opt/rave /var/lib /usr/local 2>/dev/null"
            ).stdout
            == ""
        )
    assert "config.json" not in ps and "api_key" not in ps
