"""Prometheus metrics of one server (its own registry, so that two servers in one process, as in
tests, do not share counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServeMetrics:
    """Requests by endpoint and outcome, tokens scored and generated, queue depth, batch sizes
    and latencies."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tdsdist_requests",
            "Requests by endpoint and outcome",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.engine_outcomes = Counter(
            "tdsdist_engine_requests", "Engine results by outcome", ["outcome"], registry=r
        )
        self.tokens = Counter(
            "tdsdist_tokens", "Answer positions scored or generated", ["kind"], registry=r
        )
        self.queue_depth = Gauge(
            "tdsdist_queue_depth", "Requests admitted and not finished", registry=r
        )
        self.batch_size = Histogram(
            "tdsdist_batch_size",
            "Requests per engine batch",
            ["kind"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "tdsdist_batch_seconds", "Seconds per engine batch or decode step", ["kind"], registry=r
        )
        self.latency = Histogram(
            "tdsdist_request_seconds",
            "Seconds from arrival to the last byte",
            ["endpoint"],
            registry=r,
        )
        self.first_token = Histogram(
            "tdsdist_time_to_first_token_seconds",
            "Generate: seconds to the first token",
            registry=r,
        )

    def batch(self, kind: str, size: int, seconds: float) -> None:
        self.batch_size.labels(kind).observe(size)
        self.batch_seconds.labels(kind).observe(seconds)

    def outcome(self, outcome: str) -> None:
        self.engine_outcomes.labels(outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
