"""The streamed replies every surface writes (`app.api.common.direct_stream`), under a real
uvicorn on loopback: each item one `send`, a ping comment in a silence, the body's cleanup
run when the client leaves."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from app.api.common.direct_stream import SSE_PING, SseStream, sse_frame
from tests.support.servers import answer_lifespan, serving_in_thread


class _App:
    """Streams three events, with `pause` seconds of silence before the last; records
    whether the body's `finally` ran."""

    def __init__(self, pause: float) -> None:
        self.pause = pause
        self.closed = threading.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return

        async def events() -> AsyncIterator[bytes]:
            try:
                yield sse_frame("chunk", '{"content": "a"}')
                yield sse_frame("chunk", '{"content": "b"}')
                await asyncio.sleep(self.pause)
                yield sse_frame("result", '{"id": "x"}')
            finally:
                self.closed.set()

        await SseStream(events(), ping=0.1)(scope, receive, send)


def test_events_arrive_framed_with_pings_in_a_silence_and_the_sse_headers() -> None:
    app = _App(pause=0.45)
    with serving_in_thread(app) as url:
        reply = httpx.get(url + "/", timeout=10)
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert reply.headers["cache-control"] == "no-store"
    assert reply.headers["x-accel-buffering"] == "no"
    body = reply.content
    first, rest = body.split(SSE_PING, 1)
    assert first == (b'event: chunk\r\ndata: {"content": "a"}\r\n\r\n'
                     b'event: chunk\r\ndata: {"content": "b"}\r\n\r\n')  # fmt: skip
    assert 3 <= body.count(SSE_PING) <= 5  # one per 0.1 s of the 0.45 s silence
    assert rest.endswith(b'event: result\r\ndata: {"id": "x"}\r\n\r\n')
    assert app.closed.is_set()


def test_no_ping_while_events_keep_coming() -> None:
    app = _App(pause=0.0)
    with serving_in_thread(app) as url:
        reply = httpx.get(url + "/", timeout=10)
    assert SSE_PING not in reply.content
    assert reply.content.count(b"event: ") == 3


def test_a_client_that_leaves_ends_the_body_at_once() -> None:
    app = _App(pause=30.0)
    with serving_in_thread(app) as url:
        with httpx.stream("GET", url + "/", timeout=10) as reply:
            lines = reply.iter_lines()
            assert next(lines) == "event: chunk"
        # the client is gone while the body waits in its silence: its `finally` runs now,
        # not when the 30 s are over
        started = time.monotonic()
        assert app.closed.wait(timeout=5), "the body was not closed when the client left"
        assert time.monotonic() - started < 5
