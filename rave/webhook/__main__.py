"""`python3 -m rave_webhook`: run the receiver under uvicorn (the systemd unit's ExecStart)."""

from __future__ import annotations

import logging
import os

import uvicorn

from .config import Config


def main() -> None:
    config = Config.load()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    ours = logging.getLogger("rave_webhook")
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False
    package = __package__ or "rave_webhook"
    if config.workers > 1:
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", "/run/rave-webhook/metrics")
        os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
    uvicorn.run(
        f"{package}.app:create_app",
        factory=True,
        host=config.listen_host,
        port=config.listen_port,
        workers=config.workers,
        http=config.http_impl,
        access_log=False,
        server_header=False,
        date_header=False,
        proxy_headers=False,
        timeout_keep_alive=75,
        log_level="info",
    )


if __name__ == "__main__":
    main()
