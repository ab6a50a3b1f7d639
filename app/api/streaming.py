"""Server-sent events for streamed runs.

The contract: `event: chunk` (`{content, index}`) as text arrives, then exactly one
`event: result` (the stored result with its id) or `event: error` (`{code, message,
result_id}`), then the stream ends. Comment pings keep idle connections open while a model
loads. A client that goes away cancels the run; the core stores the partial result.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent

from app.api.errors import failed_run_problem
from app.api.schemas.common import ResultOut
from app.api.schemas.runs import ChunkEvent, ErrorEvent
from app.ollama import ModelExecutionResult, StreamingChunk

PING_SECONDS = 10

SSE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": (
            "A `text/event-stream`: `chunk` events (ChunkEvent), then one `result` "
            "(ResultOut) or `error` (ErrorEvent) event."
        ),
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}

_ERROR_CODES = {
    404: "model_not_found",
    422: "rejected",
    499: "cancelled",
    502: "backend_error",
    503: "backend_unavailable",
    504: "timeout",
}


def _event(name: str, payload: dict[str, Any]) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps(payload, ensure_ascii=False), event=name)


def closing_event(result: ModelExecutionResult) -> ServerSentEvent:
    stored_id = (result.metadata or {}).get("result_id")
    if result.success:
        return _event("result", ResultOut.from_result(result, stored_id).model_dump(mode="json"))
    problem = failed_run_problem(result)
    error = ErrorEvent(
        code=_ERROR_CODES.get(problem.status, "failed"),
        message=result.error_message or problem.title,
        result_id=stored_id,
    )
    return _event("error", error.model_dump())


async def _events(chunks: AsyncIterator[StreamingChunk]) -> AsyncIterator[ServerSentEvent]:
    async for chunk in chunks:
        if chunk.done:
            if chunk.result is not None:
                yield closing_event(chunk.result)
            else:
                yield _event("error", ErrorEvent(code="failed", message="no result").model_dump())
            return
        if chunk.content or chunk.thinking:
            payload = ChunkEvent(content=chunk.content, index=chunk.index, thinking=chunk.thinking)
            yield _event("chunk", payload.model_dump(exclude_none=True))


def stream_response(chunks: AsyncIterator[StreamingChunk]) -> EventSourceResponse:
    return EventSourceResponse(_events(chunks), ping=PING_SECONDS)
