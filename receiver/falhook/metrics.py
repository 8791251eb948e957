"""Prometheus metrics (prometheus-client), one registry per app so tests stay independent."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.webhooks = Counter(
            "falhook_webhooks_total",
            "Webhook requests by outcome (accepted, duplicate, rejected) and reason.",
            ["route", "outcome", "reason"],
            registry=r,
        )
        self.verify_seconds = Histogram(
            "falhook_verify_seconds",
            "Signature verification time.",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05),
            registry=r,
        )
        self.accept_seconds = Histogram(
            "falhook_accept_seconds",
            "Time to store an event durably (group commit included).",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.deliveries = Counter(
            "falhook_deliveries_total",
            "Delivery attempts by sink and outcome (delivered, retry, dead; skipped: the"
            " sink's filter did not match; waiting: for a sink it runs after).",
            ["sink", "outcome"],
            registry=r,
        )
        self.alerts = Counter(
            "falhook_alerts_total",
            "Alert events raised (on_dead) by the route and sink of the delivery that died.",
            ["route", "sink"],
            registry=r,
        )
        self.downloads = Counter(
            "falhook_downloads_total",
            "File downloads by outcome (ok, retryable, permanent).",
            ["outcome"],
            registry=r,
        )
        self.download_bytes = Counter(
            "falhook_download_bytes_total", "Bytes downloaded.", registry=r
        )
        self.deliveries_by_state = Gauge(
            "falhook_deliveries_in_state",
            "Deliveries in the store by state (backlog: pending+retrying; dead-lettered: dead).",
            ["state"],
            registry=r,
        )
        self.keys_loaded = Gauge("falhook_jwks_keys", "Ed25519 keys in the JWKS cache.", registry=r)
        self.unfinished_body_bytes = Gauge(
            "falhook_unfinished_body_bytes",
            "Bytes held for webhook bodies still arriving (bounded by max_buffered_bytes).",
            registry=r,
        )
        self._deliveries: dict[tuple[str, str], Any] = {}

    def delivered(self, sink: str, outcome: str) -> None:
        """Count one delivery outcome (labels() takes a lock and builds a key each time: the
        children are kept)."""
        child = self._deliveries.get((sink, outcome))
        if child is None:
            child = self._deliveries[sink, outcome] = self.deliveries.labels(sink, outcome)
        child.inc()
