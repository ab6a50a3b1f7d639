"""aiohttp under httpx's API (`httpx-aiohttp`), with a reply's last bytes kept.

aiohttp's `StreamReader.read` raises a broken reply's error before the data that arrived
ahead of it, so lines a backend sent just before it died were lost whenever they had not
been read yet: a client saw fewer tokens than the backend sent, depending on timing. Here
what was received is passed on first, then the error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream, map_aiohttp_exceptions

__all__ = ["READ_BUFFER", "KeepingTransport"]

READ_BUFFER = 16 * 1024
"""aiohttp's read buffer per backend connection (it pauses reading at twice this)."""


class _KeepingStream(AiohttpResponseStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._aiohttp_response.content
        with map_aiohttp_exceptions():
            try:
                async for chunk in content.iter_chunked(self.CHUNK_SIZE):
                    yield chunk
            except aiohttp.ClientPayloadError:
                # `_read_nowait` is the buffer read without the error check (aiohttp 3.x).
                read_buffered: Any = getattr(content, "_read_nowait", None)
                rest = read_buffered(-1) if read_buffered is not None else b""
                if rest:
                    yield rest
                raise


class KeepingTransport(AiohttpTransport):
    """`AiohttpTransport` whose replies pass on what arrived before a failure."""

    def __init__(self, limits: httpx.Limits) -> None:
        def session() -> aiohttp.ClientSession:
            # A small read buffer: aiohttp stops reading a reply once twice this much waits
            # unread, so a stream whose client reads slowly holds ~32 KiB here, not ~128.
            connector = aiohttp.TCPConnector(
                limit=limits.max_connections or 0, keepalive_timeout=limits.keepalive_expiry
            )
            return aiohttp.ClientSession(connector=connector, read_bufsize=READ_BUFFER)

        super().__init__(limits=limits, trust_env=False, client=session)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        stream = response.stream
        if isinstance(stream, AiohttpResponseStream):
            response.stream = _KeepingStream(stream._aiohttp_response)
        return response
