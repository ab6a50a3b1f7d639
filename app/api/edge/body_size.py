"""The body size limits: `GATEWAY_MAX_BODY_BYTES` for every body, 413 before any route
reads one; an upload path's own limit (`GATEWAY_MAX_UPLOAD_BYTES`) for the paths that take
files.

An upload path's body is not read here: a declared length over its limit is refused at
once, and otherwise the body goes on unread to the route, which streams it to a temporary
file and counts it against the same limit as it comes (a chunked upload declares nothing).
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.common.errors import error_response

__all__ = ["BodySizeLimit"]


class BodySizeLimit:
    """Refuse request bodies over `max_bytes` with 413, before any route reads them;
    `uploads` maps a path (POST) to its own limit (see the module doc)."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, uploads: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.uploads = dict(uploads or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        upload_limit = self.uploads.get(scope["path"]) if scope["method"] == "POST" else None
        if upload_limit is not None:
            if declared is not None and declared.isdigit() and int(declared) > upload_limit:
                await self._too_large(scope, receive, send, upload_limit, "upload")
                return
            await self.app(scope, receive, send)  # counted by the route as it streams
            return
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send, self.max_bytes, "body")
            return
        if declared is not None:
            await self.app(scope, receive, send)
            return
        # No length given (chunked): read up to the limit, then replay what was read.
        body, messages = 0, []
        while True:
            message = await receive()
            messages.append(message)
            body += len(message.get("body", b""))
            if body > self.max_bytes:
                await self._too_large(scope, receive, send, self.max_bytes, "body")
                return
            if message["type"] != "http.request" or not message.get("more_body"):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int, what: str) -> None:
        response = error_response(
            Request(scope),
            413,
            "Request body too large",
            f"the {what} is larger than the limit of {limit} bytes",
        )
        await response(scope, receive, send)
