"""Server-sent events for streamed runs and for jobs.

The contract: `event: chunk` (`{content, index}`) as text arrives, then exactly one
`event: result` (the stored result with its id) or `event: error` (`{code, message,
result_id}`), then the stream ends. Comment pings keep idle connections open while a model
loads. A client that goes away cancels the run; the core stores the partial result.

A run that fails at once (unknown model, no backend) is answered like any other request,
with a problem-details error status rather than a stream holding one `error` event: the
first chunk is awaited for up to `EARLY_ERROR_SECONDS` before the stream starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import Header
from pydantic import BaseModel
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.api.common.direct_stream import SseStream, sse_frame
from app.api.common.errors import failed_run_problem
from app.api.common.shutdown import SHUTTING_DOWN, Shutdown, ShuttingDown, until_shutdown
from app.api.common.streams import first_chunk
from app.api.gateway.openapi import sse_response
from app.api.gateway.schemas.common import ResultOut
from app.api.gateway.schemas.runs import ChunkEvent, ErrorEvent, ModelChunkEvent, ReportOut
from app.jobs.service import Jobs
from app.ollama import ModelExecutionResult, StreamingChunk
from app.ollama.comparison_stream import ComparisonDone, ComparisonEvent
from app.ollama.database_outage import DatabaseUnavailable

PING_SECONDS = 10
SPOOL_FULL = (
    "the database does not answer and the spool that keeps results meanwhile is full: "
    "the result could not be kept; retry later"
)
JOB_POLL_SECONDS = 0.25

SSE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: sse_response(
        "RunEvent",
        "Server-sent events: `chunk` events (ChunkEvent), then one `result` (ResultOut) "
        "or `error` (ErrorEvent) event.",
        {"chunk": ChunkEvent, "result": ResultOut, "error": ErrorEvent},
    )
}

_ERROR_CODES = {
    404: "model_not_found",
    422: "rejected",
    499: "cancelled",
    502: "backend_error",
    503: "backend_unavailable",
    504: "timeout",
}


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return sse_frame(name, json.dumps(payload, ensure_ascii=False))


def _sse_stream(events: AsyncIterator[bytes]) -> SseStream:
    """Framed events written one `send` each, a ping comment after `PING_SECONDS` of
    silence. At SIGTERM the stream runs on for the shutdown grace (the events end with
    `shutting_down` when it runs out: `until_shutdown`)."""
    return SseStream(events, ping=PING_SECONDS)


def closing_event(result: ModelExecutionResult) -> bytes:
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


async def _events(
    first: asyncio.Future[StreamingChunk],
    rest: AsyncIterator[StreamingChunk],
    ending: asyncio.Event,
) -> AsyncIterator[bytes]:
    chunks = until_shutdown(rest, ending)
    try:
        chunk = await first
        while True:
            if chunk.done:
                if chunk.result is not None:
                    yield closing_event(chunk.result)
                else:
                    error = ErrorEvent(code="failed", message="the run ended without a result")
                    yield _event("error", error.model_dump())
                return
            if chunk.content or chunk.thinking:
                payload = ChunkEvent(
                    content=chunk.content, index=chunk.index, thinking=chunk.thinking
                )
                yield _event("chunk", payload.model_dump(exclude_none=True))
            chunk = await anext(chunks)
    except (ShuttingDown, DatabaseUnavailable) as stopped:
        yield _interrupted(stopped)
    finally:
        first.cancel()
        await _close(rest)


def _interrupted(stopped: ShuttingDown | DatabaseUnavailable) -> bytes:
    """The `error` event ending a stream the gateway stopped: its shutdown grace ran out,
    or the database does not answer and the spool is full (the run is done but cannot be
    kept)."""
    if isinstance(stopped, ShuttingDown):
        error = ErrorEvent(code="shutting_down", message=SHUTTING_DOWN)
    else:
        error = ErrorEvent(code="database_unavailable", message=SPOOL_FULL)
    return _event("error", error.model_dump())


async def _close(items: AsyncIterator[Any]) -> None:
    """Close an async iterator the stream read (its own cleanup runs now), quietly."""
    aclose = getattr(items, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


async def stream_response(chunks: AsyncIterator[StreamingChunk], shutdown: Shutdown) -> SseStream:
    """Start the SSE stream, unless the run fails within the early-error window. A stream
    in flight at SIGTERM runs on for the shutdown grace; when that runs out, the run stops
    and the stream ends with a `shutting_down` error event."""
    first = await first_chunk(chunks)
    return _sse_stream(_events(first, chunks, shutdown.ending))


COMPARISON_SSE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: sse_response(
        "ComparisonEvent",
        "Server-sent events: `chunk` events (ModelChunkEvent: a piece of one model's "
        "answer, all models at once), one `run` event per model when its run ends "
        "(ResultOut; its `id` is in the `comparison` event's report), then one "
        "`comparison` event (ReportOut: the stored report), or an `error` event "
        "(ErrorEvent) when the gateway shuts down or cannot keep the report.",
        {
            "chunk": ModelChunkEvent,
            "run": ResultOut,
            "comparison": ReportOut,
            "error": ErrorEvent,
        },
    )
}


async def _comparison_events(
    events: AsyncIterator[ComparisonEvent], ending: asyncio.Event
) -> AsyncIterator[bytes]:
    try:
        async for event in until_shutdown(events, ending):
            if isinstance(event, ComparisonDone):
                out = ReportOut(id=event.report_id, report=event.report)
                yield _event("comparison", out.model_dump(mode="json"))
                return
            chunk = event.chunk
            if chunk.done:
                if chunk.result is not None:
                    run = ResultOut.from_result(chunk.result, None)
                    yield _event("run", run.model_dump(mode="json"))
            elif chunk.content or chunk.thinking:
                piece = ModelChunkEvent(
                    model=event.model,
                    content=chunk.content,
                    index=chunk.index,
                    thinking=chunk.thinking,
                )
                yield _event("chunk", piece.model_dump(exclude_none=True))
    except (ShuttingDown, DatabaseUnavailable) as stopped:
        yield _interrupted(stopped)
    finally:
        await _close(events)


def comparison_stream_response(
    events: AsyncIterator[ComparisonEvent], shutdown: Shutdown
) -> SseStream:
    """A streamed comparison as SSE (see `COMPARISON_SSE_RESPONSES`); at SIGTERM it runs on
    for the shutdown grace, as a streamed run does."""
    return _sse_stream(_comparison_events(events, shutdown.ending))


def job_event_stream(
    jobs: Jobs,
    job_id: str,
    after: int,
    done: Callable[[dict[str, Any]], BaseModel],
    keep: Callable[[dict[str, Any]], bool] = lambda data: True,
) -> EventSourceResponse:
    """A job's events as SSE, from the database (so any replica serves them): `progress`
    events, then one `done` event (`done(job)`), each with its `id:`. A client that
    reconnects with `Last-Event-ID` (as `after`) gets every later event once."""

    async def events() -> AsyncIterator[ServerSentEvent]:
        last = after
        while True:
            batch = await jobs.aevents_after(job_id, last)
            for event in batch:
                last = event["id"]
                if event["event"] == "done":
                    data = done(event["data"]).model_dump_json()
                    yield ServerSentEvent(data=data, event="done", id=str(last))
                    return
                if keep(event["data"]):
                    data = json.dumps(event["data"], ensure_ascii=False)
                    yield ServerSentEvent(data=data, event=event["event"], id=str(last))
            if not batch:
                await asyncio.sleep(JOB_POLL_SECONDS)

    return EventSourceResponse(events(), ping=PING_SECONDS)


LastEventId = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        description="The `id` of the last event received: the stream resumes after it.",
    ),
]
"""The header a reconnecting SSE client sends (see `last_event_id`)."""


def last_event_id(header: str | None) -> int:
    """The `Last-Event-ID` a reconnecting client sends (0: from the start)."""
    if header is None or not header.strip().isdigit():
        return 0
    return min(int(header), 2**63 - 1)  # event ids are 64-bit
