"""Prometheus metrics of one app (its own registry, so several apps in one process stay apart)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events_in = Counter(
            "winback_events_in", "Events received, by path and result (stored, duplicate, rejected)",
            ["path", "result"], registry=self.registry,
        )  # fmt: skip
        self.requests = Histogram(
            "winback_request_seconds", "Request latency by route and status", ["route", "status"],
            registry=self.registry, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )  # fmt: skip
        self.auth_failures = Counter(
            "winback_auth_failures", "Requests refused for their API key", ["reason"], registry=self.registry
        )


class DetectorMetrics:
    """Prometheus metrics of the abandonment detector (``winback detect``; its own registry)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter(
            "winback_detector_events", "Events folded into the live cart state", registry=self.registry
        )
        self.abandoned = Counter(
            "winback_carts_abandoned", "Carts that crossed their idle threshold and were claimed to decide",
            registry=self.registry,
        )  # fmt: skip
        self.expired = Counter(
            "winback_carts_expired", "Carts found abandoned too late to act on in real time",
            registry=self.registry,
        )  # fmt: skip
        self.decisions = Counter(
            "winback_decisions", "Decisions stored, by action and holdout", ["action", "holdout"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "winback_detection_seconds", "From a cart crossing its idle threshold to its decision stored",
            registry=self.registry,
            buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )  # fmt: skip
        self.cancelled = Counter(
            "winback_purchase_cancels", "Scheduled messages cancelled when their cart's items were bought",
            registry=self.registry,
        )  # fmt: skip
        self.outcomes = Counter(
            "winback_outcomes_recorded", "Decisions given their outcome", registry=self.registry
        )
        self.feed_lag = Gauge(
            "winback_detector_lag_seconds", "Age of the newest event folded in (by its timestamp)",
            registry=self.registry,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "winback_outbox_messages", "Outbox messages by status", ["status"], registry=self.registry
        )
        self.queue_age = Gauge(
            "winback_outbox_oldest_due_seconds", "How long the oldest due scheduled message has waited",
            registry=self.registry,
        )  # fmt: skip
