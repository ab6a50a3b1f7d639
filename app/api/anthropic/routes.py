"""The Anthropic Messages API at `/v1/messages` (what Claude Code speaks), through the core.

`POST /v1/messages` is the core's chat run (`app.api.anthropic.translate`): routed, failed
over and continued, stored as surface `anthropic` (`GATEWAY_STORE_ANTHROPIC_API`), with the
key's scope, allowlist and limits, the audit log, metrics and spans of every run. The
client's session (`X-Claude-Code-Session-Id`) is the run's `session`, so that the routing
can keep a conversation on the backend that holds its prompt. `POST
/v1/messages/count_tokens` estimates (see `translate.estimate_tokens`); `GET /v1/models`
(and `/v1/models/{id}`) answer in Anthropic's shape when the request carries
`anthropic-version`, and are OpenAI's otherwise. `anthropic-version`, `anthropic-beta` and
`?beta=true` are accepted; the key comes as `x-api-key` or `Authorization: Bearer`.

A stream starts with `message_start` and a `ping` (another `ping` every `PING_SECONDS`
while the backend says nothing: loading a model and reading a long prompt take a while);
an error found before the stream starts is a status in Anthropic's shape, one found later
an `error` event (which Anthropic's SDKs raise).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from app.api.anthropic.errors import error_type, status_of
from app.api.anthropic.replies import PING, EventWriter, error_event, message, sse
from app.api.anthropic.translate import (
    ChatInput,
    CountTokensRequest,
    MessagesRequest,
    chat_input,
    chat_plan,
    estimate_tokens,
    invalid,
    session_of,
)
from app.api.common.auth import UserDep
from app.api.common.authorization import authorize_models
from app.api.common.deps import RelayDep, RunnerDep, ServicesDep
from app.api.common.direct_stream import DirectStream
from app.api.common.errors import ApiError, ErrorInfo, failed_run_problem
from app.api.common.quotas import admit_runs
from app.api.common.routing import requiring_header
from app.api.common.shutdown import SHUTTING_DOWN, ShuttingDown, until_shutdown
from app.api.common.streams import first_chunk
from app.ollama.names import same_model
from app.ollama.types import StreamingChunk

__all__ = ["router"]

router = APIRouter(prefix="/v1", include_in_schema=False)

PING_SECONDS = 10.0
"""Longest silence in a stream: a `ping` goes out when no event has for this long."""


@router.post("/messages", response_model=None)
async def create_message(
    body: MessagesRequest,
    runner: RunnerDep,
    services: ServicesDep,
    request: Request,
    principal: UserDep,
) -> DirectStream | JSONResponse:
    authorize_models(request, principal, [body.model])
    chat = chat_input(body)
    plan = chat_plan(body, chat.tools)
    try:
        spec = runner.request_spec(
            "chat", body.model, plan=plan, messages=chat.messages, surface="anthropic"
        )
    except ValueError as exc:
        raise invalid(str(exc)) from exc
    await admit_runs(request, principal)
    spec.prompt = chat.prompt or spec.prompt
    spec.session = session_of(request.headers, body.metadata)
    store = services.settings.store_anthropic_api
    if body.stream:
        chunks = runner.astream_spec(spec, save_output=store)
        return await _streamed(chunks, body.model, chat, services.shutdown.ending)
    result = await runner.arun_spec(spec, save_output=store)
    if not result.success:
        raise failed_run_problem(result)
    return JSONResponse(message(body.model, result))


@router.post("/messages/count_tokens")
async def count_tokens(
    body: CountTokensRequest, request: Request, principal: UserDep
) -> JSONResponse:
    """An estimate, as Ollama makes it (see `translate.estimate_tokens`): no Ollama
    version has a tokenizer endpoint to ask."""
    authorize_models(request, principal, [body.model])
    return JSONResponse({"input_tokens": estimate_tokens(chat_input(body))})


async def _streamed(
    chunks: AsyncIterator[StreamingChunk], model: str, chat: ChatInput, ending: asyncio.Event
) -> DirectStream:
    """Start the event stream unless the run fails at once (then a status reply)."""
    first = await first_chunk(chunks)
    rest = until_shutdown(chunks, ending)
    writer = EventWriter(model)

    async def events() -> AsyncIterator[bytes]:
        try:
            for event in writer.start(estimate_tokens(chat)):
                yield sse(*event)
            chunk = await first
            while True:
                if chunk.done:
                    result = chunk.result
                    if result is None or not result.success:
                        yield sse(*_failure(result))
                        return
                    for event in writer.ending(result):
                        yield sse(*event)
                    return
                for event in writer.piece(chunk.content, chunk.thinking):
                    yield sse(*event)
                chunk = await anext(rest)
        except ShuttingDown:
            yield sse(*error_event("overloaded_error", SHUTTING_DOWN))
        except StopAsyncIteration:
            return
        finally:
            if not first.done():
                first.cancel()
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    # a silence (a model loading, a long prompt read) gets a `ping` every PING_SECONDS
    return DirectStream(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"},
        ping=PING_SECONDS, ping_bytes=sse(*PING),
    )  # fmt: skip


def _failure(result: Any) -> tuple[str, dict[str, Any]]:
    """The `error` event of a run that failed after the stream started."""
    if result is None:
        return error_event("api_error", "the run failed")
    problem = failed_run_problem(result)
    status = status_of(ErrorInfo(problem.status, problem.title))
    return error_event(error_type(status), result.error_message or "the run failed")


# -- models: Anthropic's list when the request carries anthropic-version --------------------


def _created_at(tag: Mapping[str, Any]) -> str:
    """`modified_at` as RFC 3339 in UTC (the epoch when unreadable)."""
    try:
        # Go writes nanoseconds; Python reads at most microseconds.
        modified = re.sub(r"(\.\d{6})\d+", r"\1", str(tag.get("modified_at")))
        when = datetime.fromisoformat(modified).astimezone(UTC)
    except ValueError:
        when = datetime.fromtimestamp(0, UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _model(tag: Mapping[str, Any]) -> dict[str, Any]:
    name = str(tag.get("name") or tag.get("model") or "")
    return {"type": "model", "id": name, "display_name": name, "created_at": _created_at(tag)}


async def list_models(
    relay: RelayDep,
    principal: UserDep,
    limit: int = Query(default=20, ge=1, le=1000),
    after_id: str | None = Query(default=None, max_length=512),
    before_id: str | None = Query(default=None, max_length=512),
) -> JSONResponse:
    """The models the key may use, most recently modified first, a page at a time
    (`limit`, `after_id`, `before_id`)."""
    tags = [t for t in await relay.aunion("tags") if principal.allows(str(t.get("name")))]
    tags.sort(key=lambda t: str(t.get("modified_at") or ""), reverse=True)
    models = [_model(t) for t in tags]
    ids = [m["id"] for m in models]
    start, end = 0, len(models)
    if after_id is not None:
        start = ids.index(after_id) + 1 if after_id in ids else len(models)
    if before_id is not None:
        end = ids.index(before_id) if before_id in ids else 0
        start = max(start, end - limit)
    page = models[start : min(end, start + limit)]
    has_more = (start + len(page) < end) if before_id is None else start > 0
    return JSONResponse(
        {
            "data": page,
            "has_more": has_more,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
        }
    )


async def get_model(model_id: str, relay: RelayDep, principal: UserDep) -> JSONResponse:
    authorize_models(request=None, principal=principal, models=[model_id])
    for tag in await relay.aunion("tags"):
        if same_model(str(tag.get("name") or ""), model_id):
            return JSONResponse({**_model(tag), "id": model_id, "display_name": model_id})
    raise ApiError(404, "Not found", f"model '{model_id}' not found")


_ANTHROPIC_ONLY = requiring_header("anthropic-version")
router.add_api_route("/models", list_models, methods=["GET"], route_class_override=_ANTHROPIC_ONLY)
router.add_api_route(
    "/models/{model_id:path}", get_model, methods=["GET"], route_class_override=_ANTHROPIC_ONLY
)
