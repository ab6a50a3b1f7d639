"""`Metrics`: one app's Prometheus registry (each app its own: no global state).

HTTP metrics (fed by the edge's `ObservabilityMiddleware`), per-model run metrics fed by
the core's usage observers, and the backends' load (through the fleet) read at scrape
time, as is the spool's depth. With tracing on, the latency and time-to-first-token
histograms carry the trace of the observation as an exemplar (OpenMetrics; `/metrics`
answers in that format to a scraper that asks for it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from typing import cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from app.fleet import BackendLoad
from app.observability import telemetry
from app.ollama.database_outage import SpoolDepth
from app.ollama.usage import RunUsage, run_team

__all__ = ["LATENCY_BUCKETS", "Metrics", "trace_exemplar"]

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
        # Labelled by team, never by key: the teams are few, the keys may be many.
        self.tokens = Counter(
            "gateway_tokens",
            "Tokens by team ('' for keys without one) and model: prompt (in) and output "
            "(generated)",
            ["team", "model", "direction"],
            registry=r,
        )
        self.backend_seconds = Counter(
            "gateway_backend_seconds",
            "The backends' own time for runs (Ollama's total_duration), by team ('' for keys "
            "without one) and model",
            ["team", "model"],
            registry=r,
        )
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
        team = run_team.get() or ""  # the observer runs in the run's context
        if usage.prompt_tokens:
            self.tokens.labels(team, usage.model, "prompt").inc(usage.prompt_tokens)
        if usage.backend_seconds:
            self.backend_seconds.labels(team, usage.model).inc(usage.backend_seconds)
        if usage.completion_tokens:
            self.tokens.labels(team, usage.model, "output").inc(usage.completion_tokens)
            if usage.backend:
                backend = self._backend_name(usage.backend)
                self.backend_tokens.labels(backend, usage.model).inc(usage.completion_tokens)
        if usage.time_to_first_token is not None:
            self.ttft.labels(usage.model).observe(
                usage.time_to_first_token, exemplar=trace_exemplar()
            )


def trace_exemplar() -> dict[str, str] | None:
    """The current trace as a Prometheus exemplar (`trace_id`, `span_id`), when tracing is
    on and the trace is sampled; shown in the OpenMetrics exposition of `/metrics`."""
    ids = telemetry.current_ids()
    if ids is None or not ids[2]:
        return None
    return {"trace_id": ids[0], "span_id": ids[1]}
