"""Prometheus metrics: request counts and latency per route (`/detect` included), images
detected, micro-batch sizes, inference time, model-cache hits/misses/bytes, jobs per status,
requests refused by the rate limit (429) and rate-limit storage failures."""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from fastapi import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from service.settings import Settings
from service.store import Job, get_sessionmaker
from service.store.jobs import JobStatus


class _JobsCollector(Collector):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("flexbin_jobs", "Jobs by status (all tenants)", labels=["status"])
        counts: dict[str, int] = dict.fromkeys(JobStatus, 0)
        try:
            with get_sessionmaker(self.settings.database_url)() as s:
                for status, n in s.execute(select(Job.status, func.count()).group_by(Job.status)):
                    counts[status] = n
        except Exception:  # noqa: BLE001 - no numbers beat a failed scrape
            return
        for status, n in counts.items():
            family.add_metric([status], n)
        yield family


class Metrics:
    def __init__(self, settings: Settings) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("flexbin_http_requests", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("flexbin_http_request_seconds", "HTTP request latency", ["method", "route"],
                                 registry=self.registry)
        self.detect_images = Counter("flexbin_detect_images", "Images answered by POST /detect",
                                     registry=self.registry)
        self.batch_size = Histogram("flexbin_detect_batch_size", "Images per forward pass (micro-batch size)",
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64), registry=self.registry)
        self.inference_seconds = Histogram("flexbin_detect_inference_seconds", "Forward pass time per batch",
                                           registry=self.registry)
        self.cache_hits = Counter("flexbin_model_cache_hits", "Model cache hits", registry=self.registry)
        self.cache_misses = Counter("flexbin_model_cache_misses", "Model cache misses (loads)",
                                    registry=self.registry)
        self.cache_bytes = Gauge("flexbin_model_cache_bytes", "Unpacked bytes of the models in the cache",
                                 registry=self.registry)
        self.cache_models = Gauge("flexbin_model_cache_models", "Models in the cache", registry=self.registry)
        self.rate_limited = Counter("flexbin_rate_limited", "Requests refused with 429 by a per-API-key rate "
                                    "limit, by budget (requests: every endpoint; detect: POST /detect)",
                                    ["budget"], registry=self.registry)
        self.rate_limit_storage_errors = Counter("flexbin_rate_limit_storage_errors", "Rate-limit storage "
                                                 "failures (the request was allowed: fail open)",
                                                 registry=self.registry)
        self.registry.register(_JobsCollector(settings))

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def middleware(self, request: Any, call_next: Any) -> Any:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        self.latency.labels(request.method, path).observe(time.perf_counter() - started)
        self.requests.labels(request.method, path, str(response.status_code)).inc()
        return response
