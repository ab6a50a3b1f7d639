"""A tiny OTLP/HTTP trace receiver on loopback: what a collector would get, decoded.

`POST /v1/traces` with an `ExportTraceServiceRequest` (protobuf, gzip or not) is decoded
with opentelemetry-proto and kept as `ReceivedSpan`s; anything else is 404. Used by the
tracing tests and by `bench/tracing.py` (there counted per service).
"""

from __future__ import annotations

import contextlib
import gzip
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["OtlpReceiver", "ReceivedSpan", "otlp_receiver"]

SPAN_KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer",
              5: "consumer"}  # fmt: skip


@dataclass
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any], int]]
    links: list[tuple[str, str]]
    """(trace id, span id) of each linked span."""
    status_code: int
    start_ns: int
    end_ns: int
    service: str


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in any_value.kvlist_value.values}
    return getattr(any_value, kind)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


def decode(body: bytes) -> list[ReceivedSpan]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        service = str(_attributes(resource_spans.resource.attributes).get("service.name", ""))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=SPAN_KINDS.get(span.kind, str(span.kind)),
                        attributes=_attributes(span.attributes),
                        events=[
                            (e.name, _attributes(e.attributes), e.time_unix_nano)
                            for e in span.events
                        ],
                        links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                        status_code=span.status.code,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        service=service,
                    )
                )
    return spans


@dataclass
class OtlpReceiver:
    url: str
    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0
    decode_spans: bool = True
    """False: only count the spans (no decoding kept: the benchmark's sink)."""
    span_count: int = 0
    by_service: Counter[str] = field(default_factory=Counter)
    """Spans received per `service.name`."""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, body: bytes) -> None:
        spans = decode(body)
        with self._lock:
            self.requests += 1
            self.span_count += len(spans)
            self.by_service.update(span.service for span in spans)
            if self.decode_spans:
                self.spans.extend(spans)

    def snapshot(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in self.snapshot() if s.trace_id == trace_id]

    def wait_for(
        self, check: Callable[[list[ReceivedSpan]], bool], timeout: float = 20.0
    ) -> list[ReceivedSpan]:
        """The spans received, once `check` holds for them (AssertionError at `timeout`)."""
        end = time.monotonic() + timeout
        while True:
            spans = self.snapshot()
            if check(spans):
                return spans
            if time.monotonic() > end:
                names = sorted({s.name for s in spans})
                raise AssertionError(f"spans not received in {timeout}s; have: {names}")
            time.sleep(0.05)


@contextlib.contextmanager
def otlp_receiver(*, decode_spans: bool = True) -> Iterator[OtlpReceiver]:
    """An OTLP/HTTP receiver on a free loopback port; its `url` is the endpoint to export to
    (`OTEL_EXPORTER_OTLP_ENDPOINT`: the exporter adds `/v1/traces`)."""
    holder: dict[str, OtlpReceiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            if self.path != "/v1/traces":
                self.send_response(404)
                self.end_headers()
                return
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            holder["receiver"].take(body)
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver = OtlpReceiver(
        url=f"http://127.0.0.1:{server.server_address[1]}", decode_spans=decode_spans
    )
    holder["receiver"] = receiver
    thread = threading.Thread(target=server.serve_forever, name="otlp-receiver", daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
