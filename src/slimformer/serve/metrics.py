"""Prometheus metrics of one app, and the ASGI middleware that counts and times every response."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

LATENCY_BUCKETS = (
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)
# routes named on /metrics; any other path is counted as "other" so a scan cannot blow up label cardinality
KNOWN_PATHS = ("/predict", "/healthz", "/readyz", "/info", "/metrics", "/openapi.json", "/docs", "/redoc")


class ServeMetrics:
    """Prometheus metrics in a registry of this app's own (several apps in one process do not collide)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "slimformer_requests",
            "HTTP requests by method, path and status code.",
            ["method", "path", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "slimformer_request_latency_seconds",
            "HTTP request latency (server side).",
            ["method", "path"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "slimformer_batch_size",
            "Texts per predictor call (micro-batch size).",
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.batch_latency = Histogram(
            "slimformer_batch_latency_seconds",
            "Predictor time per micro-batch.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.texts = Counter("slimformer_texts", "Texts classified.", registry=self.registry)
        self.truncated = Counter(
            "slimformer_truncated_texts", "Texts truncated to the model's max tokens.", registry=self.registry
        )
        self.pending = Gauge("slimformer_pending_texts", "Texts waiting for the predictor.", registry=self.registry)

    def observe_texts(self, results: list[Any]) -> None:
        """Count the classified texts (TextResults) and the truncated ones."""
        self.texts.inc(len(results))
        truncated = sum(r.truncated for r in results)
        if truncated:
            self.truncated.inc(truncated)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_latency.observe(seconds)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class MetricsMiddleware:
    """Count every response by status code and time it."""

    def __init__(self, app: Any, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets when the app fails before answering

        async def send_and_record(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            path = scope["path"] if scope["path"] in KNOWN_PATHS else "other"
            method = scope["method"] if scope["method"] in ("GET", "POST", "HEAD") else "other"
            self.metrics.requests.labels(method, path, str(status)).inc()
            self.metrics.latency.labels(method, path).observe(time.perf_counter() - started)
