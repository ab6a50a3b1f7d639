"""Turning tracing on: the OpenTelemetry SDK, the OTLP exporter and the instrumentations.

Tracing is on when the standard variables name an OTLP endpoint
(`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) and
`OTEL_SDK_DISABLED` is not `true`; otherwise `configure` returns False having imported
nothing of OpenTelemetry, and no exporter thread runs. The rest of the standard variables
are the SDK's own: `OTEL_EXPORTER_OTLP_PROTOCOL` / `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`
(`http/protobuf`, the default here, or `grpc`), `OTEL_SERVICE_NAME` (default
`ollama-gateway`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and
`OTEL_TRACES_SAMPLER_ARG`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*` (the batch span
processor: spans are exported in batches from its own thread, off the request path).

Instrumented: FastAPI (the server span of every request, continuing an incoming
`traceparent`), the backends' httpx clients (a client span per request, `traceparent`
sent to the backend; the calls on aiohttp make the same span themselves,
`telemetry.start_http_client_span`), the SQLAlchemy engines and Redis. The
gateway's own spans (key check, rate limit, pool choice, the GenAI run span, storage) are
made through `app.observability.telemetry`.

One provider per process: `configure` is called by `create_app` (each `serve --workers`
process builds its own app) and by the `worker` command; a second call changes nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from app.observability import telemetry

__all__ = ["configure", "instrument_app", "shutdown", "wanted"]

logger = logging.getLogger(__name__)

_configured_pid: int | None = None
_provider: Any = None


def wanted(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for traces (an OTLP endpoint, the SDK not disabled)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return bool(
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    )


def configure(*, trace_content: bool = False) -> bool:
    """Set up tracing in this process when the environment asks for it; True when on."""
    global _configured_pid, _provider
    if _configured_pid == os.getpid():
        return telemetry.enabled()
    _configured_pid = os.getpid()
    if not wanted():
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:  # installed without its dependencies
        logger.warning("tracing asked for, but the OpenTelemetry SDK is missing: %s", exc)
        return False

    from app import __version__

    attributes: dict[str, str] = {"service.version": __version__}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes[SERVICE_NAME] = "ollama-gateway"
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the sampler
    # comes from OTEL_TRACES_SAMPLER(_ARG), read by TracerProvider itself.
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(_exporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    tracer = trace.get_tracer("ollama_gateway", __version__)
    telemetry.enable(
        tracer,
        trace_content=trace_content,
        http_client_hook=_instrument_http_client,
        engine_hook=_engine_instrumenter(provider),
    )
    _instrument_redis(provider)
    logger.info(
        "tracing on: OTLP over %s to %s",
        _protocol(),
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
    )
    return True


def instrument_app(app: Any) -> None:
    """The server span of every request (FastAPI's instrumentation), when tracing is on."""
    if not telemetry.enabled():
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=_provider,
        # The ASGI send/receive of every body piece: a span per SSE event otherwise.
        exclude_spans=["receive", "send"],
        # Probes and scrapes, every few seconds: no trace of them.
        excluded_urls="healthz,readyz,metrics",
    )


def shutdown() -> None:
    """Export what is left and stop the exporter (the process is ending)."""
    if _provider is not None:
        try:
            _provider.force_flush(5000)
        except Exception:  # pragma: no cover - best effort at exit
            logger.debug("flushing traces failed", exc_info=True)


def _protocol() -> str:
    return (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()


def _exporter() -> Any:
    """The OTLP span exporter the protocol names (each reads its endpoint, headers,
    timeout and compression from the standard variables)."""
    if _protocol() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter()


def _instrument_http_client(client: Any) -> None:
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor.instrument_client(client, tracer_provider=_provider)


def _engine_instrumenter(provider: Any) -> Any:
    from opentelemetry import trace
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.instrumentation.sqlalchemy.version import __version__ as sqla_version

    tracer = trace.get_tracer(
        "opentelemetry.instrumentation.sqlalchemy", sqla_version, tracer_provider=provider
    )

    class _NoCounter:
        def add(self, *args: Any, **kwargs: Any) -> None:
            pass

    def instrument(engine: Any) -> None:
        sync_engine = getattr(engine, "sync_engine", engine)
        EngineTracer(tracer, sync_engine, _NoCounter(), False, {}, False)  # type: ignore[no-untyped-call]

    return instrument


def _instrument_redis(provider: Any) -> None:
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    instrumentor = RedisInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=provider)
