"""Prometheus metrics: requests, stage latencies, upstream errors, cost.

With several worker processes, set PROMETHEUS_MULTIPROC_DIR so prometheus_client aggregates them.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from panelfuse.pipeline.events import Event, PanelCompleted, PanelFailed
from panelfuse.pipeline.result import FusionResult

REQUESTS = Counter("panelfuse_requests_total", "HTTP requests", ["method", "route", "status"])
RUNS_ACTIVE = Gauge("panelfuse_runs_active", "fusion runs in progress", multiprocess_mode="livesum")
RUNS = Counter("panelfuse_runs_total", "fusion runs finished", ["status", "degraded"])
STAGE_LATENCY = Histogram(
    "panelfuse_stage_latency_seconds",
    "latency of pipeline stages",
    ["stage"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320),
)
UPSTREAM_ERRORS = Counter("panelfuse_upstream_errors_total", "failed upstream calls", ["model", "status"])
COST = Counter("panelfuse_cost_usd_total", "USD spent upstream", ["stage"])
CACHE_LOOKUPS = Counter("panelfuse_response_cache_total", "response cache lookups", ["outcome"])  # hit|miss|skipped


def observe_event(ev: Event) -> None:
    payload = ev.payload
    if isinstance(payload, PanelFailed):
        UPSTREAM_ERRORS.labels(payload.model or "?", payload.status or "failed").inc()
    elif isinstance(payload, PanelCompleted):
        STAGE_LATENCY.labels("member").observe(payload.latency_ms / 1000)


def observe_result(result: FusionResult, status: str) -> None:
    RUNS.labels(status, str(result.degraded).lower()).inc()
    if result.cached:
        return  # served from the response cache: no stage ran, nothing was spent
    if result.judge is not None:
        STAGE_LATENCY.labels("analysis").observe(result.judge.latency_ms / 1000)
    if result.synthesizer is not None:
        STAGE_LATENCY.labels("synthesis").observe(result.synthesizer.latency_ms / 1000)
    STAGE_LATENCY.labels("run").observe(result.latency_ms / 1000)
    details = result.cost_details()
    for stage, value in (
        ("panel", sum(v or 0 for v in details["panel"].values())),
        ("analysis", details["analysis"] or 0),
        ("synthesis", details["synthesis"] or 0),
    ):
        if value:
            COST.labels(stage).inc(value)


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
