"""`python3 -m rave_webhook`: run the receiver under uvicorn (the systemd unit's ExecStart)."""

from __future__ import annotations

import logging
import os
from typing import Any

import uvicorn

from .config import Config


def configure_logging(config: Config) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    ours = logging.getLogger("rave_webhook")
    ours.addHandler(handler)
    ours.setLevel(logging.DEBUG if config.debug else logging.INFO)
    ours.propagate = False


def server_options(config: Config) -> dict[str, Any]:
    """uvicorn.run's keyword arguments besides the application."""
    return {
        "host": config.listen_host,
        "port": config.listen_port,
        "workers": config.workers,
        "http": config.http_impl,
        # debug mode: uvicorn's access line (client, method, path, status: no header)
        "access_log": config.debug,
        "server_header": False,
        "date_header": False,
        "proxy_headers": False,
        "timeout_keep_alive": 75,
        # "debug", never "trace": trace prints the raw bytes, signature headers included
        "log_level": "debug" if config.debug else "info",
    }


def main() -> None:
    config = Config.load()
    configure_logging(config)
    package = __package__ or "rave_webhook"
    if config.workers > 1:
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", "/run/rave-webhook/metrics")
        os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
    uvicorn.run(f"{package}.app:create_app", factory=True, **server_options(config))


if __name__ == "__main__":
    main()
