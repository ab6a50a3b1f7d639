"""A failover is an event on the run's span: the backend that failed, then the one that
took the run over. In process, with the gateway's helpers pointed at a tracer of this test
(an in-memory exporter; the global tracer provider is left alone) and turned off after."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.main import create_app
from app.observability import telemetry
from tests.api.conftest import gateway_settings
from tests.chaos.test_failover import MODEL, emulator, generate_while_one_dies
from tests.support.servers import serving_in_thread


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.enable(provider.get_tracer("test"), trace_content=False)
    try:
        yield exporter
    finally:
        telemetry.disable()
        provider.shutdown()


def test_a_run_that_fails_over_says_so_on_its_span(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    with emulator(20) as (first, victim), emulator(20) as (second, _):
        settings = gateway_settings([first, second], tmp_path, request_timeout=60)
        with serving_in_thread(create_app(settings)) as url:
            replies = generate_while_one_dies(url, victim, 20)
    assert [r.status_code for r in replies] == [200] * 20
    moved = [r.json() for r in replies if r.json()["metadata"].get("failed_over_from")]
    assert moved, "no run was on the killed backend"
    runs = [s for s in spans.get_finished_spans() if s.name == f"text_completion {MODEL}"]
    assert len(runs) == 20
    failed_over = [s for s in runs if any(e.name == "gateway.failover" for e in s.events)]
    assert len(failed_over) == len(moved)
    for run in failed_over:
        failover = next(e for e in run.events if e.name == "gateway.failover")
        chosen = next(e for e in run.events if e.name == "gateway.pool.chosen")
        assert failover.attributes is not None and chosen.attributes is not None
        assert failover.attributes["gateway.backend"] != chosen.attributes["gateway.pool.chosen"]
        assert failover.timestamp <= chosen.timestamp
        assert run.attributes is not None
        assert run.attributes["gateway.backend"] == chosen.attributes["gateway.pool.chosen"]
        assert run.attributes["gateway.backend.url"] == second
        assert run.status.is_ok
    choices = [s for s in spans.get_finished_spans() if s.name == "gateway.pool.choose"]
    assert len(choices) == 20
    for choice in choices:
        attributes = dict(choice.attributes or {})
        assert attributes["gateway.pool.chosen"] == next(
            iter(attributes["gateway.pool.candidates"])
        )
    assert any(len(dict(c.attributes or {})["gateway.pool.candidates"]) == 2 for c in choices)
