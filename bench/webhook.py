"""Load generator for the webhook receiver through nginx TLS on a staging host.

    RAVE_STAGING_ID=4 .venv/bin/python -m bench.webhook [--seconds 10] [--concurrency 64]

Runs from the control machine against the instance's first staging host (its own subnet only).
Signed requests are prepared before the clock starts (unique delivery ids, GitHub signatures
with the staging HMAC secret); each of `concurrency` keep-alive TLS connections sends one
request at a time. Prints, for POST /webhook and for nginx's static status page (GET /):
requests/s answered 2xx, p50/p99 latency, and their ratio; then p50/p99 of /webhook at a
fixed 200 requests/s (open loop: latency from the scheduled send time). Every run is bounded
in requests and time and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class Result:
    statuses: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    deliveries: list[tuple[str, int]] = field(default_factory=list)  # (delivery id, status)
    errors: int = 0
    unsent: int = 0  # scheduled but still queued at the deadline (the target fell behind)
    seconds: float = 0.0

    @property
    def ok(self) -> int:
        return sum(1 for s in self.statuses if 200 <= s < 300)

    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def line(self, label: str) -> str:
        return (
            f"{label:28s} {self.rate():8.0f} 2xx/s  p50 {self.percentile(50) * 1000:6.1f} ms  "
            f"p99 {self.percentile(99) * 1000:6.1f} ms  ({self.ok}/{len(self.statuses)} 2xx, "
            f"{self.errors} errors, {self.seconds:.1f}s)"
        )


def signed_request(
    host: str, secret: bytes, n: int, run: str = "", delivery: str | None = None
) -> tuple[str, bytes]:
    delivery = delivery or str(uuid.uuid4())
    body = json.dumps(
        {"ref": "refs/heads/main", "n": n, "run": run, "pad": "x" * 200},
        separators=(",", ":"),
    ).encode()
    signature = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    head = (
        f"POST /webhook HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nX-GitHub-Event: push\r\n"
        f"X-GitHub-Delivery: {delivery}\r\nX-Hub-Signature-256: {signature}\r\n"
        "User-Agent: rave-bench\r\n\r\n"
    )
    return delivery, head.encode() + body


def static_request(host: str) -> bytes:
    return f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: rave-bench\r\n\r\n".encode()


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:].strip())
    if length:
        await reader.readexactly(length)
    return status


def client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the staging certificate is self-signed
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


async def run_load(
    address: str,
    port: int,
    requests: Iterator[tuple[str, bytes]],
    *,
    concurrency: int = 64,
    seconds: float = 10.0,
    rate: float | None = None,
    stop_at_deadline: bool = False,
) -> Result:
    """Send until `requests` is exhausted or `seconds` pass. With `rate`, open loop; then
    `stop_at_deadline` drops what is still queued at the deadline (counted as `unsent`) instead
    of sending the backlog of a target that fell behind."""
    result = Result()
    context = client_context()
    deadline = time.monotonic() + seconds
    start = time.monotonic()
    queue: asyncio.Queue[tuple[str, bytes, float]] | None = None
    if rate:
        queue = asyncio.Queue()

    async def scheduler() -> None:
        assert queue is not None and rate is not None
        interval = 1.0 / rate
        due = time.monotonic()
        for delivery, request in requests:
            if due > deadline:
                break
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await queue.put((delivery, request, due))
            due += interval
        for _ in range(concurrency):
            await queue.put(("", b"", 0.0))

    async def worker() -> None:
        reader = writer = None
        while True:
            if queue is not None:
                delivery, request, scheduled = await queue.get()
                if not request:
                    break
                if stop_at_deadline and time.monotonic() > deadline:
                    result.unsent += 1
                    continue
            else:
                if time.monotonic() > deadline:
                    break
                try:
                    delivery, request = next(requests)
                except StopIteration:
                    break
                scheduled = time.monotonic()
            try:
                for attempt in (1, 2):
                    reused = writer is not None
                    if writer is None:
                        reader, writer = await asyncio.open_connection(
                            address, port, ssl=context, server_hostname=None
                        )
                    assert reader is not None
                    writer.write(request)
                    try:
                        status = await asyncio.wait_for(_read_response(reader), timeout=30)
                        break
                    except (asyncio.IncompleteReadError, ConnectionResetError) as closed:
                        # nginx closes a keep-alive connection after keepalive_requests
                        # (1000): nothing of the answer came, so send it once more on a new one
                        partial = getattr(closed, "partial", b"")
                        if not reused or partial or attempt == 2:
                            raise
                        writer.close()
                        reader = writer = None
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
                result.errors += 1
                result.deliveries.append((delivery, 0))
                if writer is not None:
                    writer.close()
                reader = writer = None
                continue
            result.latencies.append(time.monotonic() - scheduled)
            result.statuses.append(status)
            if delivery:
                result.deliveries.append((delivery, status))
        if writer is not None:
            writer.close()

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    if queue is not None:
        tasks.append(asyncio.create_task(scheduler()))
    await asyncio.gather(*tasks)
    result.seconds = time.monotonic() - start
    return result


def webhook_requests(
    host: str, secret: bytes, count: int, run: str = "", prefix: str = ""
) -> Iterator[tuple[str, bytes]]:
    """`count` signed deliveries; with `prefix`, their delivery ids are `<prefix><n>`."""
    prepared = [
        signed_request(host, secret, n, run, f"{prefix}{n}" if prefix else None)
        for n in range(count)
    ]
    return iter(prepared)


def static_requests(host: str, count: int) -> Iterator[tuple[str, bytes]]:
    request = static_request(host)
    return iter([("", request)] * count)


def staging_target() -> tuple[str, list[bytes]]:
    """The instance's first staging host and its webhook HMAC secrets (decrypted locally)."""
    from pathlib import Path

    from rave.secrets import crypto
    from rave.secrets.store import STAGING_IDENTITY, Environment
    from rave.staging import Instance, instance_id

    instance = Instance(instance_id())
    hosts = json.loads(instance.hosts_json.read_text())
    state = Path(instance.state)
    identities = crypto.load_identities(state / STAGING_IDENTITY)
    values = Environment.named("staging", state / "secrets").decrypt(identities)
    return hosts[0]["address"], [s.encode() for s in values.webhook_hmac_secrets]


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-requests", type=int, default=60000)
    parser.add_argument("--port", type=int, default=3002)
    args = parser.parse_args(argv)
    address, secrets = staging_target()
    host = f"{address}:{args.port}"
    print(f"target https://{host}  load average before: {loadavg()}  cores: {os.cpu_count()}")

    static = asyncio.run(
        run_load(
            address,
            args.port,
            static_requests(host, args.max_requests * 10),
            concurrency=args.concurrency,
            seconds=args.seconds,
        )
    )
    print(static.line("nginx static GET /"))
    hooks = asyncio.run(
        run_load(
            address,
            args.port,
            webhook_requests(host, secrets[0], args.max_requests),
            concurrency=args.concurrency,
            seconds=args.seconds,
        )
    )
    print(hooks.line("POST /webhook (durable)"))
    if static.rate():
        print(f"{'webhook / static ratio':28s} {hooks.rate() / static.rate():8.2f}")
    paced = asyncio.run(
        run_load(
            address,
            args.port,
            webhook_requests(host, secrets[0], int(200 * args.seconds) + 10),
            concurrency=32,
            seconds=args.seconds,
            rate=200,
        )
    )
    print(paced.line("POST /webhook @ 200/s"))
    print(f"load average after: {loadavg()}")
    return 0 if hooks.ok and paced.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
