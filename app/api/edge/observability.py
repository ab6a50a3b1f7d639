"""Request ids, Prometheus metrics, access lines and safe response headers.

`ObservabilityMiddleware` (pure ASGI, so streams pass through unbuffered) wraps every
request: it takes the client's `X-Request-ID` when it is sane, else makes one; echoes it
on the response and puts it in `app.observability.request_context.request_id` (logs and the requests
sent to backends carry it); adds `X-Content-Type-Options: nosniff`; counts the request by
route template and status, times it, tracks streams in flight; and writes one access line.

The metrics are the app's `Metrics` (app.api.common.metrics), found through its services.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.common.metrics import Metrics, trace_exemplar
from app.observability.request_context import request_id

__all__ = ["ObservabilityMiddleware"]

access_log = logging.getLogger("ollama_gateway.access")

REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
STREAM_TYPES = (b"text/event-stream", b"application/x-ndjson")


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
