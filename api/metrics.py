"""Prometheus metrics: job counts and durations read from the database at scrape time (the row is the
truth, so every API replica reports the same), plus this process's HTTP request counts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.core.jobs import KINDS, STATUSES
from api.core.models import Job

DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)


class JobCollector:
    def __init__(self, make_session: sessionmaker[Session]) -> None:
        self.make_session = make_session

    def collect(self) -> Iterator[Any]:
        jobs = GaugeMetricFamily("jaga_jobs", "Jobs by kind and status", labels=["kind", "status"])
        depth = GaugeMetricFamily("jaga_queue_depth", "Jobs waiting for a worker (status queued)", labels=["kind"])
        durations = HistogramMetricFamily(
            "jaga_job_duration_seconds", "Run time of finished jobs (started to finished)", labels=["kind"]
        )
        with self.make_session() as s:
            counts = {
                (k, st): n
                for k, st, n in s.execute(select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status))
            }
            finished = s.execute(
                select(Job.kind, Job.started_at, Job.finished_at)
                .where(Job.finished_at.is_not(None), Job.started_at.is_not(None))
                .order_by(Job.finished_at.desc())
                .limit(10_000)
            ).all()
        for kind in KINDS:
            for status in STATUSES:
                jobs.add_metric([kind, status], counts.get((kind, status), 0))
            depth.add_metric([kind], counts.get((kind, "queued"), 0))
            secs = [(f - s).total_seconds() for k, s, f in finished if k == kind and s and f]
            buckets = [(str(b), sum(1 for x in secs if x <= b)) for b in DURATION_BUCKETS]
            buckets.append(("+Inf", len(secs)))
            durations.add_metric([kind], buckets, sum(secs))
        yield jobs
        yield depth
        yield durations


def make_registry(make_session: sessionmaker[Session]) -> tuple[CollectorRegistry, Counter, Histogram]:
    registry = CollectorRegistry()
    registry.register(JobCollector(make_session))  # type: ignore[arg-type]
    requests = Counter("jaga_http_requests_total", "HTTP requests", ["method", "route", "status"], registry=registry)
    latency = Histogram("jaga_http_request_seconds", "HTTP request latency", ["method", "route"], registry=registry)
    return registry, requests, latency


class RequestMetrics:
    """ASGI middleware counting requests and their latency by route template. Plain ASGI rather than
    ``BaseHTTPMiddleware``: no task group wraps the app, so an error raised while the body streams in (a 413)
    reaches the app's own handlers unchanged instead of as an ``ExceptionGroup``."""

    def __init__(self, app: ASGIApp, requests: Counter, latency: Histogram) -> None:
        self.app = app
        self.requests = requests
        self.latency = latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before it answers

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")  # the router sets it on the shared scope
            self.requests.labels(scope["method"], path, str(status)).inc()
            self.latency.labels(scope["method"], path).observe(time.perf_counter() - started)
