"""The backend calls on aiohttp (`GATEWAY_HTTP_TRANSPORT=aiohttp`): its session, a reply's
pieces with the last bytes kept, its headers as the relay passes them on, its failures
sorted into the gateway's kinds.

No httpx layer in between: profiles of the gateway under load had httpx's API over an
aiohttp transport (`httpx-aiohttp`) at about a quarter of the CPU samples of a request.

aiohttp's `StreamReader.readany` raises a broken reply's error before the data that
arrived ahead of it, so lines a backend sent just before it died were lost whenever they
had not been read yet: a client saw fewer tokens than the backend sent, depending on
timing. Here what was received is passed on first, then the error.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncGenerator
from typing import Any, Literal

import aiohttp

__all__ = [
    "HOP_BY_HOP",
    "KEEPALIVE_SECONDS",
    "READ_BUFFER",
    "Failure",
    "failure_kind",
    "new_session",
    "pieces",
    "reply_headers",
]

READ_BUFFER = 16 * 1024
"""aiohttp's read buffer per backend connection (it pauses reading at twice this)."""
KEEPALIVE_SECONDS = 5.0
"""How long an idle connection is kept for the next call (httpx's default, kept)."""

Failure = Literal["connect", "timeout", "cut", "other"]
"""What went wrong: no connection, no answer in time, a reply cut short, anything else."""

HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})


def new_session(max_connections: int, ssl_context: ssl.SSLContext | None) -> aiohttp.ClientSession:
    """A session for one backend on the running loop: at most `max_connections` open (0:
    no limit), idle ones kept `KEEPALIVE_SECONDS`, no environment proxies, no redirects.

    A small read buffer: aiohttp stops reading a reply once twice this much waits unread,
    so a stream whose client reads slowly holds ~32 KiB here, not ~128.
    """
    connector = aiohttp.TCPConnector(
        limit=max_connections,
        keepalive_timeout=KEEPALIVE_SECONDS,
        ssl=ssl_context if ssl_context is not None else True,
    )
    return aiohttp.ClientSession(
        connector=connector,
        read_bufsize=READ_BUFFER,
        trust_env=False,
        # Each call gives its own (`ClientTimeout`); no total deadline of aiohttp's own.
        timeout=aiohttp.ClientTimeout(total=None),
    )


async def pieces(response: aiohttp.ClientResponse) -> AsyncGenerator[bytes, None]:
    """The body's bytes as they arrive (what is buffered, in one piece per read); on a
    reply cut short, what arrived before the cut, then the error (`ClientPayloadError`)."""
    content = response.content
    try:
        while chunk := await content.readany():
            yield chunk
    except aiohttp.ClientPayloadError:
        # `_read_nowait` is the buffer read without the error check (aiohttp 3.x).
        read_buffered: Any = getattr(content, "_read_nowait", None)
        rest = read_buffered(-1) if read_buffered is not None else b""
        if rest:
            yield rest
        raise


def reply_headers(response: aiohttp.ClientResponse) -> dict[str, str]:
    """The reply's headers as the `/api` relay passes them on: names in lower case, a
    repeated header's values joined by ", ", the hop-by-hop ones left out."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in response.raw_headers:
        name = raw_name.decode("latin-1").lower()
        if name in HOP_BY_HOP:
            continue
        try:
            value = raw_value.decode()
        except UnicodeDecodeError:
            value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def failure_kind(exc: BaseException) -> Failure | None:
    """The kind of an aiohttp failure, as httpx's transport over aiohttp sorted them before
    (None: not one of aiohttp's or a timeout). A read that timed out is `timeout`; any other
    connection failure (refused, reset, closed before the reply, a connect or pool wait
    that timed out) is `connect`; a body cut short is `cut`."""
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "cut"
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectionError):
        return "connect"
    if isinstance(exc, aiohttp.ClientError):
        return "other"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return None
