"""A streamed reply written straight to the ASGI `send`: every stream the gateway answers
(the `/api` relay's NDJSON, the OpenAI, Anthropic and Responses SSE streams, the
`/gateway` run and comparison SSE streams).

Starlette's `StreamingResponse` opens an anyio task group per response under servers that
speak ASGI before 2.4 (uvicorn speaks 2.3) to watch for the client leaving, and
sse-starlette adds a task group, a lock, an event object and an encode per event on top;
on a 64-token stream that was most of the gateway's fixed cost. Here each item the body
yields is one `send`; one plain task waits on `receive` and cancels the stream when the
client is gone (the body's `finally` runs: the run is stored as cancelled); with `ping`, one
more task writes a keep-alive comment when nothing was sent for that long (a model loading).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterable, Mapping
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

__all__ = ["SSE_HEADERS", "SSE_MEDIA_TYPE", "SSE_PING", "DirectStream", "SseStream", "sse_frame"]

SSE_MEDIA_TYPE = "text/event-stream"
SSE_HEADERS = {"Cache-Control": "no-store", "Connection": "keep-alive", "X-Accel-Buffering": "no"}
"""What a reverse proxy must see not to buffer or cache an event stream."""
SSE_PING = b": ping\r\n\r\n"
"""A comment line: SSE clients ignore it; it keeps idle connections (and proxies) open."""


def sse_frame(event: str, data: str) -> bytes:
    """One server-sent event, CRLF-separated; `data` is one line (JSON has no newline)."""
    return f"event: {event}\r\ndata: {data}\r\n\r\n".encode()


class DirectStream(StreamingResponse):
    """A streamed reply, each item of `content` one `send` (see the module doc). `ping`:
    seconds of silence after which `ping_bytes` is written."""

    def __init__(
        self,
        content: AsyncIterable[bytes | str],
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
        *,
        ping: float | None = None,
        ping_bytes: bytes = SSE_PING,
    ) -> None:
        super().__init__(content, status_code=status_code, headers=headers, media_type=media_type)
        self.ping = ping
        self.ping_bytes = ping_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        consumer = asyncio.current_task()
        gone = False
        last_sent = time.monotonic()
        sending = asyncio.Lock()

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            if consumer is not None:
                consumer.cancel()

        async def keep_alive(every: float) -> None:
            nonlocal last_sent
            while True:
                await asyncio.sleep(every - (time.monotonic() - last_sent))
                if time.monotonic() - last_sent >= every:
                    async with sending:
                        await send(
                            {"type": "http.response.body", "body": self.ping_bytes,
                             "more_body": True}
                        )  # fmt: skip
                    last_sent = time.monotonic()

        watcher = asyncio.ensure_future(watch())
        pinger: asyncio.Task[Any] | None = None
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code,
                 "headers": self.raw_headers}
            )  # fmt: skip
            if self.ping is not None:
                pinger = asyncio.ensure_future(keep_alive(self.ping))
            charset = self.charset
            async for chunk in self.body_iterator:
                body = chunk.encode(charset) if isinstance(chunk, str) else bytes(chunk)
                if pinger is None:
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                else:
                    async with sending:
                        await send({"type": "http.response.body", "body": body, "more_body": True})
                    last_sent = time.monotonic()
            if pinger is not None:
                pinger.cancel()
                pinger = None
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if gone and consumer is not None and consumer.uncancel() == 0:
                return  # the client left: nothing more to send
            raise
        finally:
            watcher.cancel()
            if pinger is not None:
                pinger.cancel()
            # a `send` that raised left the body suspended at a `yield`: close it now, so
            # its `finally` (the backend's reply closed, the run stored) runs at once
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()


class SseStream(DirectStream):
    """Server-sent events (framed by `sse_frame`) with the headers proxies need and a ping
    comment after `ping` seconds of silence. As a route's `response_class` it leaves the
    OpenAPI document's media types to the route's `responses` (no class `media_type`)."""

    def __init__(
        self, content: AsyncIterable[bytes | str], status_code: int = 200, *, ping: float | None
    ) -> None:
        super().__init__(
            content, status_code, headers=SSE_HEADERS, media_type=SSE_MEDIA_TYPE, ping=ping
        )
