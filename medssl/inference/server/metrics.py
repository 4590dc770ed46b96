"""Prometheus metrics of one server, on a registry of its own (``GET /metrics``).

- ``medssl_http_requests_total{route,status}``: answers by route and HTTP status
- ``medssl_http_request_seconds{route}``: latency histogram, first byte in to last byte out
- ``medssl_http_in_flight``: requests being handled now
- ``medssl_model_ready``: 1 once the model is loaded and warmed up
- ``medssl_predictions_running``: predictions in worker threads (timed-out ones included)
- ``medssl_uploads_arriving``: request bodies being received (they hold no compute slot)
- ``medssl_prediction_peak_rss_bytes``: the process's peak resident memory during each
  prediction (histogram), ``medssl_prediction_last_peak_rss_bytes`` that of the latest one

Routes outside the app's own are counted as ``other``, so scanning for paths cannot grow
the number of series.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

ROUTES = frozenset(
    {"/live", "/ready", "/metrics", "/v1/models", "/v1/predict", "/openapi.json", "/docs"}
)
RSS_BUCKETS = tuple(float(g * (1 << 30)) for g in (0.25, 0.5, 1, 2, 4, 8, 16, 32, 64))
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ServiceMetrics:
    """The collectors; :meth:`render` gives the exposition text."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "medssl_http_requests",
            "HTTP answers by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "medssl_http_request_seconds",
            "HTTP request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "medssl_http_in_flight", "HTTP requests being handled", registry=self.registry
        )
        self.model_ready = Gauge(
            "medssl_model_ready", "1 once the model is loaded and warmed up", registry=self.registry
        )
        self.predictions_running = Gauge(
            "medssl_predictions_running", "predictions in worker threads", registry=self.registry
        )

        self.uploads_arriving = Gauge(
            "medssl_uploads_arriving", "request bodies being received", registry=self.registry
        )
        self.prediction_peak = Histogram(
            "medssl_prediction_peak_rss_bytes",
            "peak resident memory of the server process during a prediction",
            buckets=RSS_BUCKETS,
            registry=self.registry,
        )
        self.last_peak = Gauge(
            "medssl_prediction_last_peak_rss_bytes",
            "peak resident memory of the server process during the latest prediction",
            registry=self.registry,
        )

    def observe_peak(self, peak_bytes: int) -> None:
        """One prediction's peak resident memory (called from its worker thread)."""
        self.prediction_peak.observe(peak_bytes)
        self.last_peak.set(peak_bytes)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """ASGI middleware (outermost): counts every answer, including the ones middlewares gave."""

    def __init__(self, app, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in ROUTES else "other"
        status = 500  # what the client sees if the app ends without answering
        start = time.perf_counter()

        async def watched_send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, watched_send)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
