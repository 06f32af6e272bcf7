"""Prometheus metrics of the receiver (multi-process aware when uvicorn runs several workers)."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        registry = None if self.multiprocess else self.registry
        self.requests = Counter(
            "rave_webhook_requests",
            "Webhook requests by outcome",
            ["outcome"],
            registry=registry,
        )
        self.verification_failures = Counter(
            "rave_webhook_verification_failures",
            "Requests refused because a signature or token did not verify",
            ["provider"],
            registry=registry,
        )
        self.latency = Histogram(
            "rave_webhook_request_duration_seconds",
            "Time from request start to response (includes the spool fsync)",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.spool_depth = Gauge(
            "rave_webhook_spool_depth",
            "Events on disk not yet committed to PostgreSQL",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.spool_bytes = Gauge(
            "rave_webhook_spool_bytes",
            "Bytes of spooled events not yet committed to PostgreSQL",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.db_write_errors = Counter(
            "rave_webhook_db_write_errors",
            "Failed attempts to write spooled events to PostgreSQL",
            registry=registry,
        )
        self.db_events = Counter(
            "rave_webhook_db_events",
            "Spooled events committed to PostgreSQL, by result",
            ["result"],
            registry=registry,
        )
        self.db_up = Gauge(
            "rave_webhook_db_up",
            "1 when the last write to PostgreSQL succeeded",
            registry=registry,
            multiprocess_mode="min",
        )
        self.spool_stalled = Gauge(
            "rave_webhook_spool_stalled_seconds",
            "Seconds undrained events have waited without the drainer moving on (0: empty)",
            registry=registry,
            multiprocess_mode="max",
        )
        self.dead_letters = Gauge(
            "rave_webhook_dead_letters",
            "Deliveries PostgreSQL refused on their own, waiting for an operator",
            registry=registry,
            multiprocess_mode="max",
        )
        self.dead_letter_bytes = Gauge(
            "rave_webhook_dead_letter_bytes",
            "Bytes in the dead-letter store",
            registry=registry,
            multiprocess_mode="max",
        )
        self.dead_letter_store_full = Gauge(
            "rave_webhook_dead_letter_store_full",
            "1 while the dead-letter store is at its bound (the drain stops at the refused record)",
            registry=registry,
            multiprocess_mode="max",
        )
        self.dead_lettered = Counter(
            "rave_webhook_dead_lettered",
            "Spooled deliveries moved to the dead-letter store",
            registry=registry,
        )
        for outcome in (
            "accepted",
            "duplicate",
            "unauthorized",
            "malformed",
            "too_large",
            "method",
            "unavailable",
        ):
            self.requests.labels(outcome)
        for provider in ("github", "gitlab", "standard", "unknown"):
            self.verification_failures.labels(provider)
        for result in ("inserted", "duplicate"):
            self.db_events.labels(result)

    def exposition(self) -> tuple[bytes, str]:
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
