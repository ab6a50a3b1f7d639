"""A tiny reverse proxy (ASGI, run with `serving_in_thread`) in front of an emulator that
notes what reaches the backend: each request's arrival order, model, prompt,
`Authorization` and `traceparent` headers, and how many runs of each model were in flight at once. With
`require_token` it answers 401 unless `Authorization: Bearer <token>` comes along, as an
authenticating proxy in front of Ollama does.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support.servers import answer_lifespan

__all__ = ["Arrival", "RecordingProxy"]


@dataclass
class Arrival:
    path: str
    model: str | None
    prompt: str | None
    authorization: str | None
    at: float
    traceparent: str | None = None


@dataclass
class RecordingProxy:
    upstream: str
    require_token: str | None = None
    arrivals: list[Arrival] = field(default_factory=list)
    in_flight: Counter[str] = field(default_factory=Counter)
    most_in_flight: Counter[str] = field(default_factory=Counter)
    """The most runs of each model the backend had at once."""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _client: httpx.AsyncClient | None = None

    def prompts(self, path: str = "/api/generate") -> list[str | None]:
        return [a.prompt for a in self.arrivals if a.path == path]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            if self._client is not None:
                await self._client.aclose()
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        try:
            request = json.loads(body) if body else {}
        except ValueError:
            request = {}
        model = request.get("model") if isinstance(request, dict) else None
        prompt = request.get("prompt") if isinstance(request, dict) else None
        auth = headers.get("authorization")
        with self._lock:
            self.arrivals.append(
                Arrival(
                    scope["path"],
                    model,
                    prompt,
                    auth,
                    time.monotonic(),
                    traceparent=headers.get("traceparent"),
                )
            )
        if self.require_token is not None and auth != f"Bearer {self.require_token}":
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"application/json")]})  # fmt: skip
            await send({"type": "http.response.body", "body": b'{"error":"unauthorized"}'})
            return
        counted = scope["path"] in ("/api/generate", "/api/chat") and isinstance(model, str)
        if counted:
            with self._lock:
                self.in_flight[model] += 1
                self.most_in_flight[model] = max(self.most_in_flight[model], self.in_flight[model])
        try:
            await self._forward(scope, body, send)
        finally:
            if counted:
                with self._lock:
                    self.in_flight[model] -= 1

    async def _forward(self, scope: Any, body: bytes, send: Any) -> None:
        url = self.upstream + scope["path"]
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode()
        if self._client is None:  # one client, on the proxy's own loop
            self._client = httpx.AsyncClient(timeout=60, trust_env=False)
        async with self._client.stream(scope["method"], url, content=body) as reply:
            await send({"type": "http.response.start", "status": reply.status_code,
                        "headers": [(b"content-type",
                                     reply.headers.get("content-type", "").encode())]})  # fmt: skip
            async for piece in reply.aiter_raw():
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
