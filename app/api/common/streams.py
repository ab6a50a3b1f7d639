"""What every surface that streams a run needs before its first byte: a run that fails
at once is answered with an error status in the surface's shape, not with a stream that
opens only to fail."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from app.api.common.errors import failed_run_problem
from app.ollama import StreamingChunk

__all__ = ["EARLY_ERROR_SECONDS", "first_chunk"]

EARLY_ERROR_SECONDS = 1.0


async def first_chunk(chunks: AsyncIterator[StreamingChunk]) -> asyncio.Future[StreamingChunk]:
    """The stream's first chunk, waited for up to `EARLY_ERROR_SECONDS`: a run that has
    failed by then raises its problem (a status reply, not a stream that opens to fail)."""
    first: asyncio.Future[StreamingChunk] = asyncio.ensure_future(anext(chunks))
    await asyncio.wait({first}, timeout=EARLY_ERROR_SECONDS)
    if first.done() and not first.cancelled():
        chunk = first.result()
        if chunk.done and chunk.result is not None and not chunk.result.success:
            raise failed_run_problem(chunk.result)
    return first
