"""Request ids, Prometheus metrics, access lines and safe response headers.

`ObservabilityMiddleware` (pure ASGI, so streams pass through unbuffered) wraps every
request: it takes the client's `X-Request-ID` when it is sane, else makes one; echoes it
on the response and puts it in `app.request_context.request_id` (logs and the requests
sent to backends carry it); adds `X-Content-Type-Options: nosniff`; counts the request by
route template and status, times it, tracks streams in flight; and writes one access line.

With tracing on, the latency and time-to-first-token histograms carry the trace of the
observation as an exemplar (OpenMetrics; `/metrics` answers in that format to a scraper
that asks for it).

`Metrics` holds one app's Prometheus registry (each app its own: no global state): HTTP
metrics, per-model run metrics fed by the core's usage observers, and the backends' load (through the core)
read at scrape time, as is the spool's depth.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import telemetry
from app.ollama.admin import BackendLoad
from app.ollama.database_outage import SpoolDepth
from app.ollama.usage import RunUsage
from app.request_context import request_id

__all__ = ["Metrics", "ObservabilityMiddleware"]

access_log = logging.getLogger("ollama_gateway.access")

REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
STREAM_TYPES = (b"text/event-stream", b"application/x-ndjson")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class BackendCollector(Collector):
    """Each backend's health, requests in flight and queue depth, read at scrape time."""

    def __init__(self, loads: Callable[[], list[BackendLoad]]) -> None:
        self.loads = loads

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "gateway_backend_up",
            "1 when the backend's circuit is closed and its last check answered",
            labels=["backend"],
        )
        outstanding = GaugeMetricFamily(
            "gateway_backend_outstanding", "Requests in flight on the backend", labels=["backend"]
        )
        queued = GaugeMetricFamily(
            "gateway_backend_queue_depth",
            "Requests waiting for one of the backend's slots",
            labels=["backend"],
        )
        for load in self.loads():
            up.add_metric([load.name], 1.0 if load.up else 0.0)
            outstanding.add_metric([load.name], float(load.outstanding))
            queued.add_metric([load.name], float(load.waiting))
        yield up
        yield outstanding
        yield queued


class EscapedRowsCollector(Collector):
    """Rows the database refused as they were and took with their text escaped, by table."""

    def __init__(self, counts: Mapping[str, Callable[[], int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "gateway_rows_escaped",
            "Rows stored only after their text was escaped (NUL, lone surrogates, too long)",
            labels=["table"],
        )
        for table, count in self.counts.items():
            family.add_metric([table], float(count()))
        yield family


class SpoolCollector(Collector):
    """The spool's depth (results waiting for the database), read at scrape time: the same
    from every process that shares the spool directory."""

    def __init__(self, depth: Callable[[], SpoolDepth]) -> None:
        self.depth = depth

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = self.depth()
        yield GaugeMetricFamily(
            "gateway_spool_entries",
            "Results (or reports with their runs) spooled while the database did not answer, "
            "not yet written to it",
            value=float(depth.entries),
        )
        yield GaugeMetricFamily(
            "gateway_spool_bytes", "Bytes of those spooled entries", value=float(depth.bytes)
        )


class Metrics:
    def __init__(
        self,
        backend_loads: Callable[[], list[BackendLoad]],
        escaped: Mapping[str, Callable[[], int]] | None = None,
        spool_depth: Callable[[], SpoolDepth] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        # With `serve --workers N` (PROMETHEUS_MULTIPROC_DIR set), samples go to files that
        # the scrape sums over every process; the metrics belong to no registry of their own.
        several = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        r: CollectorRegistry | None = None if several else self.registry
        if several:
            collect_all = cast(Callable[[CollectorRegistry], object], MultiProcessCollector)
            collect_all(self.registry)
        self.requests = Counter(
            "gateway_requests", "HTTP requests answered", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "gateway_request_duration_seconds",
            "Time to answer a request (to the end of a streamed body)",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.streams = Gauge(
            "gateway_inflight_streams",
            "Streamed responses (SSE or NDJSON) in flight",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.runs = Counter(
            "gateway_runs", "Generations and chats finished", ["model", "surface", "outcome"],
            registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "gateway_tokens", "Tokens by model: in (prompt) and out (generated)",
            ["model", "direction"], registry=r,
        )  # fmt: skip
        self.backend_tokens = Counter(
            "gateway_backend_tokens",
            "Tokens generated (out) by backend and model",
            ["backend", "model"],
            registry=r,
        )
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds",
            "From the request to the backend to its first token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._backend_loads = backend_loads
        self._backend_names: dict[str, str] = {}
        # Read at scrape time, from the process that answers it (circuits and load are
        # per process).
        self.registry.register(BackendCollector(backend_loads))
        self.registry.register(EscapedRowsCollector(escaped or {}))
        if spool_depth is not None:
            self.registry.register(SpoolCollector(spool_depth))

    def close(self) -> None:
        """This process is ending: its live gauges leave the multiprocess sum."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            mark_dead = cast(Callable[[int], None], multiprocess.mark_process_dead)
            mark_dead(os.getpid())

    def _backend_name(self, url: str) -> str:
        """A backend's name (as `gateway_backend_up` labels it) from its URL."""
        name = self._backend_names.get(url)
        if name is None:
            loads = self._backend_loads()
            self._backend_names = {load.url.rstrip("/"): load.name for load in loads}
            name = self._backend_names.get(url, url)
        return name

    def observe_run(self, usage: RunUsage) -> None:
        """A usage observer (`OllamaManager.usage_observers`)."""
        outcome = "succeeded" if usage.success else "failed"
        self.runs.labels(usage.model, usage.surface, outcome).inc()
        if usage.prompt_tokens:
            self.tokens.labels(usage.model, "in").inc(usage.prompt_tokens)
        if usage.completion_tokens:
            self.tokens.labels(usage.model, "out").inc(usage.completion_tokens)
            if usage.backend:
                backend = self._backend_name(usage.backend)
                self.backend_tokens.labels(backend, usage.model).inc(usage.completion_tokens)
        if usage.time_to_first_token is not None:
            self.ttft.labels(usage.model).observe(
                usage.time_to_first_token, exemplar=trace_exemplar()
            )


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        rid = given if given and REQUEST_ID_PATTERN.match(given) else uuid.uuid4().hex
        token = request_id.set(rid)
        scope.setdefault("state", {})["request_id"] = rid
        started = time.perf_counter()
        status = 500
        streaming = False
        metrics: Metrics | None = _metrics(scope)

        async def wrapped(message: Message) -> None:
            nonlocal status, streaming
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                headers.append((b"x-content-type-options", b"nosniff"))
                message["headers"] = headers
                content_type = dict(headers).get(b"content-type", b"")
                streaming = content_type.startswith(STREAM_TYPES)
                if streaming and metrics is not None:
                    metrics.streams.inc()
            await send(message)

        try:
            await self.app(scope, receive, wrapped)
        finally:
            duration = time.perf_counter() - started
            if streaming and metrics is not None:
                metrics.streams.dec()
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            if metrics is not None:
                metrics.requests.labels(route, scope["method"], str(status)).inc()
                metrics.latency.labels(route).observe(duration, exemplar=trace_exemplar())
            principal = (scope.get("state") or {}).get("principal")
            client = scope.get("client")
            access_log.info(
                "%s %s %s",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(duration * 1000, 3),
                    "client": client[0] if client else None,
                    "principal": getattr(principal, "name", None),
                },
            )
            request_id.reset(token)


def trace_exemplar() -> dict[str, str] | None:
    """The current trace as a Prometheus exemplar (`trace_id`, `span_id`), when tracing is
    on and the trace is sampled; shown in the OpenMetrics exposition of `/metrics`."""
    ids = telemetry.current_ids()
    if ids is None or not ids[2]:
        return None
    return {"trace_id": ids[0], "span_id": ids[1]}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _metrics(scope: Scope) -> Metrics | None:
    app = scope.get("app")
    services = getattr(getattr(app, "state", None), "services", None)
    metrics = getattr(services, "metrics", None)
    return metrics if isinstance(metrics, Metrics) else None
