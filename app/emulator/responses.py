"""Writing replies as Ollama does: status, content type, Go's JSON bytes, NDJSON streams.

The ASGI plumbing (`send_body`, `send_json`, `send_error`, `stream_objects`, `read_body`)
and the shapes of generate and chat replies built from an engine's events (`chunk_line`,
`final_line`, `single_reply`), with Ollama's key order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

from app.emulator.engine import Event, Finished, Piece
from app.emulator.errors import CutConnection, OllamaError
from app.emulator.wire import dumps, utc_now

__all__ = [
    "JSON_TYPE",
    "NDJSON_TYPE",
    "TEXT_TYPE",
    "chunk_line",
    "final_line",
    "lines_of",
    "read_body",
    "send_body",
    "send_error",
    "send_json",
    "single_reply",
    "stream_objects",
]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
JSON = dict[str, Any]
Kind = Literal["generate", "chat"]

JSON_TYPE = b"application/json; charset=utf-8"
NDJSON_TYPE = b"application/x-ndjson"
TEXT_TYPE = b"text/plain; charset=utf-8"


# -- ASGI ------------------------------------------------------------------------------


async def read_body(receive: Receive) -> bytes:
    """The whole request body (what came before a disconnect)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def send_body(
    send: Send, status: int, content_type: bytes | None, body: bytes, *, head: bool = False
) -> None:
    """One whole reply with a content length (no body for HEAD)."""
    headers = [(b"content-length", str(len(body)).encode())]
    if content_type is not None:
        headers.insert(0, (b"content-type", content_type))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def send_json(send: Send, obj: Any, status: int = 200, *, head: bool = False) -> None:
    await send_body(send, status, JSON_TYPE, dumps(obj), head=head)


async def send_cut_body(send: Send, body: bytes) -> None:
    """Headers announcing all of a JSON `body`, half of it, then the connection dropped
    (the `cut_after_chunks` fault on a non-streamed reply)."""
    headers = [(b"content-type", JSON_TYPE), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
    raise CutConnection(f"emulated connection cut after {len(body) // 2} of {len(body)} bytes")


async def send_error(send: Send, exc: OllamaError) -> None:
    await send_json(send, {"error": exc.message}, exc.status)


async def stream_objects(
    send: Send, objects: AsyncIterator[JSON], *, cut_after: int | None = None
) -> None:
    """Send each object as an NDJSON line as it comes; after `cut_after` lines, drop the
    connection instead (the `cut_after_chunks` fault). An `OllamaError` raised once the
    stream has started ends it as Ollama does: with an `{"error": ...}` line.

    The status and headers go out with the first line, as Go's `net/http` sends them on
    the first write: a client waits for them through the model's load and the prompt's
    evaluation, as it does with Ollama."""
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", NDJSON_TYPE)],
    }
    if cut_after == 0:
        await send(start)
        raise CutConnection("emulated connection cut after 0 chunks")
    started = False

    async def write(body: bytes, *, more: bool = True) -> None:
        nonlocal started
        if not started:  # the headers go out with the first write
            await send(start)
            started = True
        await send({"type": "http.response.body", "body": body, "more_body": more})

    sent = 0
    try:
        async for obj in objects:
            if cut_after is not None and sent >= cut_after:
                raise CutConnection(f"emulated connection cut after {sent} chunks")
            await write(dumps(obj) + b"\n")
            sent += 1
    except OllamaError as exc:
        await write(dumps({"error": exc.message}) + b"\n")
    await write(b"", more=False)


# -- generate and chat replies -----------------------------------------------------------


def chunk_line(kind: Kind, model: str, piece: Piece) -> JSON:
    """A streamed line that carries one piece (`done: false`)."""
    line: JSON = {"model": model, "created_at": utc_now()}
    if kind == "generate":
        line["response"] = piece.content
        if piece.thinking is not None:
            line["thinking"] = piece.thinking
    else:
        message: JSON = {"role": "assistant", "content": piece.content}
        if piece.thinking is not None:
            message["thinking"] = piece.thinking
        if piece.tool_calls is not None:
            message["tool_calls"] = piece.tool_calls
        line["message"] = message
    line["done"] = False
    return line


def final_line(kind: Kind, model: str, finished: Finished) -> JSON:
    """A stream's last line: empty text, the reason, (generate) the context, the counters."""
    reply: JSON = {"model": model, "created_at": utc_now()}
    if kind == "generate":
        reply.update({"response": "", "done": True, "done_reason": finished.reason})
        if finished.context is not None:
            reply["context"] = finished.context
    else:
        reply.update(
            {
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": finished.reason,
            }
        )
    reply.update(finished.metrics)
    return reply


async def lines_of(kind: Kind, model: str, events: AsyncIterator[Event]) -> AsyncIterator[JSON]:
    """The NDJSON lines of a streamed generation."""
    async for event in events:
        if isinstance(event, Finished):
            yield final_line(kind, model, event)
            return
        yield chunk_line(kind, model, event)


async def single_reply(kind: Kind, model: str, events: AsyncIterator[Event]) -> JSON:
    """The one object of a `stream: false` generation: all pieces joined, then the end."""
    content: list[str] = []
    thinking: list[str] = []
    tool_calls: list[JSON] | None = None
    finished: Finished | None = None
    async for event in events:
        if isinstance(event, Finished):
            finished = event
            break
        content.append(event.content)
        if event.thinking is not None:
            thinking.append(event.thinking)
        if event.tool_calls is not None:
            tool_calls = [*(tool_calls or []), *event.tool_calls]
    if finished is None:
        raise OllamaError(500, "the engine stopped without finishing")
    reply: JSON = {"model": model, "created_at": utc_now()}
    if kind == "generate":
        reply["response"] = "".join(content)
        if thinking:
            reply["thinking"] = "".join(thinking)
        reply.update({"done": True, "done_reason": finished.reason})
        if finished.context is not None:
            reply["context"] = finished.context
    else:
        message: JSON = {"role": "assistant", "content": "".join(content)}
        if thinking:
            message["thinking"] = "".join(thinking)
        if tool_calls:
            message["tool_calls"] = tool_calls
        reply.update({"message": message, "done": True, "done_reason": finished.reason})
    reply.update(finished.metrics)
    return reply
