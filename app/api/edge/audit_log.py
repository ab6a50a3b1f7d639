"""The audit middleware: one audit entry per operation, written off the request's path.

For every request but probes and docs it records who (the principal's name, or
`anonymous` / `invalid-key` when refused by the key check, or `unverified <key prefix>`
when refused before the key was checked), what (method and route
template, e.g. `POST /gateway/generate`), the target model (set by the model check, else
a path parameter), the surface, the outcome (`allowed`, `denied` for 401/403/429,
`failed` otherwise), the status, the duration and the client's address. Request bodies
(prompts) are never copied. Entries go to `AuditWriter`, which stores them in batches.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.common.errors import surface_of

__all__ = ["AuditMiddleware"]

UNAUDITED = {"/healthz", "/readyz", "/docs", "/redoc", "/openapi.json", "/"}
"""Probes and docs: asked for every few seconds by load balancers, and no operation."""
CONSOLE_PREFIX = "/ui"
"""The web console's files (`app.api.console.static_site`): no operation either."""
TARGET_PARAMS = ("name", "model", "key", "result_id", "report_id", "job_id", "backend")


def _unaudited(path: str) -> bool:
    return path in UNAUDITED or path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/")


def outcome_of(status: int) -> str:
    if status < 400:
        return "allowed"
    if status in (401, 403, 429):
        return "denied"
    return "failed"


def _presented(scope: Scope) -> str:
    """Who a request refused before its key was checked claimed to be: the key's prefix
    (its first 12 characters, as key listings show it), else `anonymous`."""
    for name, value in scope.get("headers") or ():
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return f"unverified {token.strip()[:12]}"
    return "anonymous"


class AuditMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _unaudited(scope["path"]):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            self._record(scope, status, (time.perf_counter() - started) * 1000)

    @staticmethod
    def _record(scope: Scope, status: int, duration_ms: float) -> None:
        app = scope.get("app")
        services = getattr(getattr(app, "state", None), "services", None)
        if services is None:
            return
        state: dict[str, Any] = scope.get("state") or {}
        principal = state.get("principal")
        actor = principal.name if principal is not None else state.get("actor") or _presented(scope)
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        params: dict[str, Any] = scope.get("path_params") or {}
        target = state.get("audit_target") or next(
            (str(params[p]) for p in TARGET_PARAMS if p in params), None
        )
        client = scope.get("client")
        services.audit.record(
            actor=actor,
            action=f"{scope['method']} {template}",
            target=target,
            outcome=outcome_of(status),
            status=status,
            duration_ms=round(duration_ms, 3),
            surface=surface_of(scope).name,
            client=client[0] if client else None,
        )
