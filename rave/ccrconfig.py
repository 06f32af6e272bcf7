#!/usr/bin/python3
"""Claude Code Router's config.json, built at service start (ExecStartPre) on the host.

Shipped as /usr/local/sbin/rave-ccr-config (standard library only, Debian's python3). Reads the
deploy's non-secret settings file and the ccr_api_keys secret (JSON: provider name -> key; the
reserved name APIKEY is the key clients and the web UI give to the router itself) and writes
config.json (0600) into the unit's RuntimeDirectory: the keys exist only in tmpfs under /run.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

ROUTER_KEY = "APIKEY"


def build(settings: dict[str, Any], keys: dict[str, str]) -> dict[str, Any]:
    """The config.json document (pure: tested on the control machine)."""
    providers = []
    for provider in settings["providers"]:
        entry: dict[str, Any] = {
            "name": provider["name"],
            "api_base_url": provider["api_base_url"],
            "api_key": keys.get(provider["name"], ""),
            "models": list(provider["models"]),
        }
        if provider.get("transformer"):
            entry["transformer"] = {"use": list(provider["transformer"])}
        providers.append(entry)
    config: dict[str, Any] = {
        "HOST": settings["host"],
        "PORT": settings["port"],
        "LOG": False,
        "API_TIMEOUT_MS": settings["api_timeout_ms"],
        "Providers": providers,
        "Router": {"default": settings["default_route"]} if settings["default_route"] else {},
    }
    if settings.get("proxy_url"):
        config["PROXY_URL"] = settings["proxy_url"]
    if keys.get(ROUTER_KEY):
        config["APIKEY"] = keys[ROUTER_KEY]
    return config


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print("usage: rave-ccr-config SETTINGS_JSON SECRET_FILE OUTPUT_DIR", file=sys.stderr)
        return 2
    settings_file, secret_file, out_dir = argv[1:]
    with open(settings_file, encoding="utf-8") as f:
        settings = json.load(f)
    with open(secret_file, encoding="utf-8") as f:
        keys = json.load(f)
    if not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values()):
        print(f"{secret_file}: not a JSON object of strings", file=sys.stderr)
        return 1
    if any(v for k, v in keys.items() if k != ROUTER_KEY) and not keys.get(ROUTER_KEY):
        # without APIKEY CCR answers GET /api/config (provider keys included) to any local client
        print(f"{secret_file}: provider keys need an {ROUTER_KEY} entry too", file=sys.stderr)
        return 1
    os.umask(0o077)
    os.makedirs(out_dir, mode=0o700, exist_ok=True)
    tmp = os.path.join(out_dir, ".config.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(build(settings, keys), f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, os.path.join(out_dir, "config.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
