"""Prometheus metrics of one app (its own registry, so several apps in one process stay apart)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


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
