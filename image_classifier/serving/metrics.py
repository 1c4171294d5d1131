"""Prometheus metrics of the service, in a registry of their own (two apps in one process do not collide),
and the middleware that counts and times every response."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from image_classifier.serving.heap import CollectorPauses

PREFIX = "image_classifier_"
ROUTES = ("/predict", "/predict/batch", "/health", "/ready", "/metadata", "/metrics", "/docs", "/openapi.json")


class Metrics:
    def __init__(self, max_batch_size: int, current_model: Callable[[], object | None]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(PREFIX + "requests_total", "HTTP requests", ["route", "status"], registry=self.registry)
        self.errors = Counter(
            PREFIX + "errors_total", "requests answered 4xx/5xx", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            PREFIX + "request_duration_seconds",
            "time from request to response",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        sizes = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, max_batch_size})
        self.batch_size = Histogram(
            PREFIX + "batch_size", "images per forward pass", buckets=sizes, registry=self.registry
        )
        self.images = Counter(PREFIX + "images_predicted_total", "images classified", registry=self.registry)
        self.reloads = Counter(
            PREFIX + "model_reloads_total",
            "model re-resolutions, by result (swapped, unchanged, failed, refused)",
            ["result"],
            registry=self.registry,
        )
        self.dropped = Counter(
            PREFIX + "dropped_requests_total",
            "prediction requests answered 503 (full, deadline, stopping) or dropped (disconnected), by reason",
            ["reason"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            PREFIX + "requests_in_progress", "prediction requests admitted and not yet answered", registry=self.registry
        )
        self.registry.register(_ModelInfo(current_model))
        self.gc_pauses = CollectorPauses()
        self.registry.register(_GcPauses(self.gc_pauses))

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)
        self.images.inc(size)


class _ModelInfo(Collector):
    """model_info, read from the model being served at each scrape: there is no moment, during a swap or
    ever, when a scrape finds no model (or two)."""

    def __init__(self, current_model: Callable[[], object | None]) -> None:
        self._current_model = current_model

    def collect(self):
        family = GaugeMetricFamily(
            PREFIX + "model_info", "the model being served (1)", labels=["sha256", "name", "version"]
        )
        model = self._current_model()
        if model is not None:
            info = model.info
            family.add_metric([info.sha256, info.registry_name or "", str(info.registry_version or "")], 1)
        yield family


class _GcPauses(Collector):
    """The garbage collector's pauses (heap.py): every thread waits while one runs."""

    def __init__(self, pauses: CollectorPauses) -> None:
        self._pauses = pauses

    def collect(self):
        pauses = self._pauses
        count = CounterMetricFamily(
            PREFIX + "gc_collections", "garbage collections, by generation", labels=["generation"]
        )
        seconds = CounterMetricFamily(
            PREFIX + "gc_pause_seconds", "time the process stood still in garbage collections", labels=["generation"]
        )
        longest = GaugeMetricFamily(
            PREFIX + "gc_longest_pause_seconds", "the longest garbage collection so far", labels=["generation"]
        )
        for generation in range(pauses.GENERATIONS):
            label = [str(generation)]
            count.add_metric(label, pauses.collections[generation])
            seconds.add_metric(label, pauses.seconds[generation])
            longest.add_metric(label, pauses.longest[generation])
        yield from (count, seconds, longest)


class RequestMetrics:
    """ASGI middleware: count every response by route and status, and time it."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in ROUTES else "other"
        started = time.perf_counter()
        status = 500

        async def recording_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
            self.metrics.requests.labels(route, str(status)).inc()
            if status >= 400:
                self.metrics.errors.labels(route, str(status)).inc()


class WorkerInfo(Collector):
    """worker_info (with --workers N > 1): which worker process answered this scrape. Each worker counts its
    own requests: a scrape shows the counters of the one worker that accepted it."""

    def __init__(self, number: int) -> None:
        self._number = number

    def collect(self):
        family = GaugeMetricFamily(
            PREFIX + "worker_info", "the worker process that answered this scrape (1)", labels=["worker", "pid"]
        )
        family.add_metric([str(self._number), str(os.getpid())], 1)
        yield family
