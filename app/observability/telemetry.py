"""Tracing for the gateway's own code: spans, links and context, free when tracing is off.

Tracing is on only in a process where `app.observability.telemetry_setup.configure` found an OTLP endpoint
(`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) and called
`enable`. Until then every helper here is a check of one module global and returns at
once: nothing of OpenTelemetry is imported (not even its API), no span object is made.

Once on, the helpers use the OpenTelemetry API only (the SDK, the exporters and the
maintained instrumentations are `app.observability.telemetry_setup`'s). The HTTP client and database
engine instrumentations are applied through hooks that module registers
(`instrument_http_client`, `instrument_engine`), so the layers that make those objects
import nothing but this module.

Prompts and answers go into spans only with `GATEWAY_TRACE_CONTENT=true`
(`content_enabled`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Span, SpanContext, Tracer

__all__ = [
    "AttributeValue",
    "add_event",
    "content_enabled",
    "continued",
    "current_ids",
    "current_span_context",
    "enable",
    "enabled",
    "end_http_client_span",
    "end_span",
    "ending",
    "inject",
    "instrument_engine",
    "instrument_http_client",
    "monotonic_to_ns",
    "set_attributes",
    "span",
    "start_http_client_span",
    "start_span",
    "suppressed",
    "use_span",
]

AttributeValue = str | bool | int | float | Sequence[str] | Sequence[int] | Sequence[float]

_tracer: Tracer | None = None
_trace_content = False
_http_client_hook: Callable[[Any], None] | None = None
_engine_hook: Callable[[Any], None] | None = None


def enable(
    tracer: Tracer,
    *,
    trace_content: bool,
    http_client_hook: Callable[[Any], None] | None = None,
    engine_hook: Callable[[Any], None] | None = None,
) -> None:
    """Turn the helpers on (by `app.observability.telemetry_setup.configure`, once per process)."""
    global _tracer, _trace_content, _http_client_hook, _engine_hook
    _tracer = tracer
    _trace_content = trace_content
    _http_client_hook = http_client_hook
    _engine_hook = engine_hook


def disable() -> None:
    """Turn the helpers off again (tests)."""
    global _tracer, _trace_content, _http_client_hook, _engine_hook
    _tracer = None
    _trace_content = False
    _http_client_hook = _engine_hook = None


def enabled() -> bool:
    return _tracer is not None


def content_enabled() -> bool:
    """Whether prompts and answers may go into spans (`GATEWAY_TRACE_CONTENT`)."""
    return _tracer is not None and _trace_content


# -- instrumentation hooks ---------------------------------------------------------------


def instrument_http_client(client: Any) -> None:
    """Trace an `httpx.AsyncClient`: a span per request and `traceparent` sent along.
    Nothing when tracing is off. (Calls made on aiohttp directly make theirs with
    `start_http_client_span`.)"""
    if _http_client_hook is not None:
        _http_client_hook(client)


def instrument_engine(engine: Any) -> None:
    """Trace a SQLAlchemy `AsyncEngine`'s statements. Nothing when tracing is off."""
    if _engine_hook is not None:
        _engine_hook(engine)


# -- spans -------------------------------------------------------------------------------


_KINDS: dict[str, Any] = {}


def _kind(kind: str) -> Any:
    if not _KINDS:
        from opentelemetry.trace import SpanKind

        _KINDS.update(
            internal=SpanKind.INTERNAL,
            client=SpanKind.CLIENT,
            server=SpanKind.SERVER,
            producer=SpanKind.PRODUCER,
            consumer=SpanKind.CONSUMER,
        )
    return _KINDS[kind]


@contextlib.contextmanager
def span(
    name: str, attributes: Mapping[str, AttributeValue] | None = None, *, kind: str = "internal"
) -> Iterator[Span | None]:
    """A span around a block, current inside it (None, and no cost, when tracing is off).
    An exception leaving the block is recorded and sets the span's status to error."""
    if _tracer is None:
        yield None
        return
    with _tracer.start_as_current_span(name, kind=_kind(kind), attributes=attributes) as current:
        yield current


def start_span(
    name: str,
    attributes: Mapping[str, AttributeValue] | None = None,
    *,
    kind: str = "internal",
    links: Sequence[SpanContext] = (),
    root: bool = False,
    start_time: int | None = None,
) -> Span | None:
    """A span started now (or at `start_time`, ns since the epoch) under the current one
    (`root`: in a trace of its own), not made current: for work whose end is elsewhere
    (`use_span` makes it current for a while, `end_span` ends it). None when off."""
    if _tracer is None:
        return None
    from opentelemetry import context as otel_context
    from opentelemetry.trace import Link

    return _tracer.start_span(
        name,
        context=otel_context.Context() if root else None,
        kind=_kind(kind),
        attributes=attributes,
        links=[Link(link) for link in links],
        start_time=start_time,
    )


@contextlib.contextmanager
def use_span(current: Span | None) -> Iterator[None]:
    """Make `current` the current span inside the block (without ending it)."""
    if current is None or _tracer is None:
        yield
        return
    from opentelemetry import trace

    with trace.use_span(current, end_on_exit=False, record_exception=False):
        yield


def end_span(current: Span | None, error: BaseException | str | None = None) -> None:
    """End `current` (once; None is fine), with an error status when `error` is given."""
    if current is None or not current.is_recording():
        return
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        if isinstance(error, BaseException):
            current.record_exception(error)
            description = f"{type(error).__name__}: {error}"
        else:
            description = error
        current.set_status(Status(StatusCode.ERROR, description))
    current.end()


@contextlib.contextmanager
def ending(current: Span | None) -> Iterator[None]:
    """End `current` when the block leaves: with the exception as its error if one
    escapes (cancellation included), else plainly."""
    try:
        yield
    except BaseException as exc:
        end_span(current, exc)
        raise
    finally:
        end_span(current)


def start_http_client_span(method: str, url: str, headers: dict[str, str]) -> Span | None:
    """The client span of an HTTP request about to be sent by code no instrumentation wraps
    (the backend calls on aiohttp), under the current span, with its `traceparent` (and
    `tracestate`) put into `headers`; the same name and attributes as httpx's
    instrumentation gives its spans. None when tracing is off or suppressed (`suppressed`).
    `end_http_client_span` ends it once the reply's status is known or the request failed."""
    if _tracer is None:
        return None
    from opentelemetry import propagate, trace
    from opentelemetry.instrumentation.utils import is_http_instrumentation_enabled

    if not is_http_instrumentation_enabled():
        return None
    current = _tracer.start_span(
        method, kind=_kind("client"), attributes={"http.method": method, "http.url": url}
    )
    propagate.inject(headers, context=trace.set_span_in_context(current))
    return current


def end_http_client_span(
    current: Span | None, status: int | None = None, error: BaseException | None = None
) -> None:
    """End a span of `start_http_client_span`: with the reply's status (an error from 400
    up, as httpx's instrumentation has it), or with the error the request failed with."""
    if current is None:
        return
    if status is not None:
        current.set_attribute("http.status_code", status)
    end_span(
        current,
        error if error is not None else (f"HTTP {status}" if (status or 0) >= 400 else None),
    )


def set_attributes(attributes: Mapping[str, AttributeValue | None], on: Span | None = None) -> None:
    """Set attributes (those not None) on `on`; with `on` None, on the current span."""
    if _tracer is None:
        return
    target = on if on is not None else _current()
    if target is not None and target.is_recording():
        target.set_attributes({k: v for k, v in attributes.items() if v is not None})


def add_event(
    name: str,
    attributes: Mapping[str, AttributeValue] | None = None,
    *,
    on: Span | None = None,
    timestamp: int | None = None,
) -> None:
    """An event on `on`, else on the current span (`timestamp`: ns since the epoch)."""
    if _tracer is None:
        return
    target = on if on is not None else _current()
    if target is not None and target.is_recording():
        target.add_event(name, attributes=attributes, timestamp=timestamp)


def monotonic_to_ns(perf_counter_value: float) -> int:
    """A `time.perf_counter()` reading as ns since the epoch (for span and event times)."""
    return time.time_ns() - int((time.perf_counter() - perf_counter_value) * 1e9)


def _current() -> Span | None:
    from opentelemetry import trace

    current = trace.get_current_span()
    return current if current.get_span_context().is_valid else None


# -- context -----------------------------------------------------------------------------


def current_span_context() -> SpanContext | None:
    """The current span's context (for a link to it), or None."""
    if _tracer is None:
        return None
    current = _current()
    return current.get_span_context() if current is not None else None


def current_ids() -> tuple[str, str, bool] | None:
    """The current trace id and span id (hex) and whether it is sampled, or None."""
    if _tracer is None:
        return None
    current = _current()
    if current is None:
        return None
    ctx = current.get_span_context()
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}", ctx.trace_flags.sampled


def inject() -> dict[str, str]:
    """The current context as W3C headers (`traceparent`, `tracestate`); empty when off."""
    if _tracer is None:
        return {}
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


@contextlib.contextmanager
def continued(
    carrier: Mapping[str, str] | None,
    name: str,
    attributes: Mapping[str, AttributeValue] | None = None,
    *,
    kind: str = "consumer",
) -> Iterator[Span | None]:
    """A span continuing the trace `carrier` holds (W3C headers, as `inject` made them),
    current inside the block; a new trace when the carrier holds none. Whatever context was
    current before (a worker's background task) is not its parent."""
    if _tracer is None:
        yield None
        return
    from opentelemetry import context as otel_context
    from opentelemetry import propagate

    parent = propagate.extract(dict(carrier or {}), context=otel_context.Context())
    token = otel_context.attach(parent)
    try:
        with _tracer.start_as_current_span(
            name, kind=_kind(kind), attributes=attributes
        ) as current:
            yield current
    finally:
        otel_context.detach(token)


@contextlib.contextmanager
def suppressed() -> Iterator[None]:
    """No spans from the instrumentations inside the block (nor in tasks it creates): for
    background work (health checks, polling), which would otherwise fill the traces."""
    if _tracer is None:
        yield
        return
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    with suppress_instrumentation():
        yield
