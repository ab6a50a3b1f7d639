"""OpenAI's Responses API at `/v1/responses`, through the core and stateful.

`POST /v1/responses` becomes one of the core's chat runs (`ModelRunner.request_spec`), so
it is routed, failed over, continued mid-stream, limited, audited, traced and stored like
any run, as surface `responses`. With `store` (OpenAI's default) the response is also kept
in the database as an index over that run (`app.responses.StoredResponses`), so that any replica
can read it (`GET /v1/responses/{id}`), list what it was made from
(`GET /v1/responses/{id}/input_items`), delete it, and continue it: `previous_response_id`
puts the stored conversation before the request's input. A response belongs to the key
that made it: another user key gets a 404, as for every stored result.

The client's own name for its conversation (`prompt_cache_key`, or Codex's `session-id`
header, or `x-session-affinity`) goes to the run as its `session`, for routing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from app.access import Principal
from app.api.common.auth import UserDep
from app.api.common.authorization import authorize_models
from app.api.common.deps import ResponsesDep, RunnerDep, ServicesDep
from app.api.common.direct_stream import DirectStream
from app.api.common.errors import ApiError, failed_run_problem
from app.api.common.ownership import may_read
from app.api.common.quotas import admit_runs
from app.api.common.shutdown import SHUTTING_DOWN, ShuttingDown, until_shutdown
from app.api.common.streams import first_chunk
from app.api.openai.responses.events import ResponseEvents
from app.api.openai.responses.output import (
    Answer,
    echo_params,
    layout,
    new_id,
    output_items,
    response_object,
    status_of,
    usage_of,
)
from app.api.openai.responses.request import ResponsesRequest
from app.api.openai.responses.translate import (
    ToolNames,
    common_prefix,
    conversation,
    plan_of,
    tools_of,
)
from app.api.openai.translate import invalid
from app.ollama import ModelExecutionResult, StreamingChunk
from app.ollama.metadata import run_metadata
from app.responses import ConversationBroken, ResponseRecord, StoredResponses, StoredTurn

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/responses", include_in_schema=False)

SESSION_HEADERS = ("session-id", "x-session-affinity")
"""Headers that name a client's conversation, after the body's `prompt_cache_key`."""

ITEM_PREFIXES = {"message": "msg", "function_call": "fc", "function_call_output": "fco",
                 "reasoning": "rs"}  # fmt: skip


def _not_found(response_id: str) -> ApiError:
    return ApiError(404, "Not found", f"Response with id '{response_id}' not found.")


def _owner(principal: Principal) -> str | None:
    return None if principal.anonymous else principal.name


def _readable(record: ResponseRecord, principal: Principal) -> bool:
    return may_read(principal, record.principal) and principal.allows(record.model)


def own_items(given: str | list[Any] | None) -> list[Any]:
    """The request's input as items, each with a type and an id (kept as the response's
    input items): a string is one user message; a message's string content one text
    part. Anything else stays as sent, for the translation to judge."""
    if given is None or given == "":
        return []
    if isinstance(given, str):
        given = [{"role": "user", "content": given}]
    items: list[Any] = []
    for item in given:
        if not isinstance(item, Mapping):
            items.append(item)
            continue
        item = dict(item)
        if "type" not in item and "role" in item:
            item["type"] = "message"
        if item.get("type") == "message" and isinstance(item.get("content"), str):
            kind = "output_text" if item.get("role") == "assistant" else "input_text"
            item["content"] = [{"type": kind, "text": item["content"]}]
        if not isinstance(item.get("id"), str) or not item["id"]:
            item["id"] = new_id(ITEM_PREFIXES.get(str(item.get("type")), "item"))
        items.append(item)
    return items


def conversation_items(turns: Sequence[StoredTurn]) -> list[dict[str, Any]]:
    """The items of stored responses, oldest first: each one's input, then its output."""
    items: list[dict[str, Any]] = []
    for turn in turns:
        items += turn.record.input_items
        items += output_items(turn.record.output_items, Answer.of_turn(turn))
    return items


async def stored_conversation(
    responses: StoredResponses, response_id: str, principal: Principal
) -> list[StoredTurn]:
    """The conversation a request continues: a stored response the key may read, and every
    response before it. 404 otherwise, naming the id."""
    found = await responses.aowner(response_id)
    if found is None or not (may_read(principal, found[0]) and principal.allows(found[1])):
        raise ApiError(
            404,
            "Not found",
            f"Previous response with id '{response_id}' not found: it was never stored "
            "(`store: false`), was deleted, or belongs to another key.",
        )
    try:
        return await responses.aconversation(response_id)
    except ConversationBroken as exc:
        raise ApiError(404, "Not found", f"{exc}: the conversation cannot be continued") from exc


@dataclass
class Turn:
    """One `POST /v1/responses`, from its translated run to its answer (and its record)."""

    body: ResponsesRequest
    response_id: str
    created_at: int
    names: ToolNames
    params: dict[str, Any]
    input_items: list[Any]
    depth: int
    owner: str | None
    responses: StoredResponses

    def opening(self) -> dict[str, Any]:
        """The response as `response.created` shows it."""
        return response_object(
            response_id=self.response_id,
            model=self.body.model,
            params=self.params,
            status="in_progress",
            created_at=self.created_at,
            output=[],
            usage=None,
            previous_response_id=self.body.previous_response_id,
        )

    async def finish(
        self,
        result: ModelExecutionResult,
        ids: Mapping[str, str] | None = None,
        order: Sequence[str] = (),
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The output items and the response of a finished run; the response is stored
        first (when asked), so a client that continues it at once finds it."""
        answer = Answer.of_result(result)
        status, why = status_of(result.success, answer.done_reason, self.body.max_output_tokens)
        shapes: list[dict[str, Any]] = []
        if result.success:
            shapes = layout(
                answer,
                self.names,
                incomplete=status == "incomplete",
                parallel_tool_calls=self.params["parallel_tool_calls"],
                ids=ids,
                order=order,
            )
        items = output_items(shapes, answer)
        completed_at = int(time.time()) if status == "completed" else None
        response = response_object(
            response_id=self.response_id,
            model=self.body.model,
            params=self.params,
            status=status,
            created_at=self.created_at,
            completed_at=completed_at,
            output=items,
            usage=usage_of(answer),
            previous_response_id=self.body.previous_response_id,
            error=None if result.success else (result.error_message or "the run failed"),
            incomplete_reason=why,
        )
        if self.body.store:
            await self._store(result, status, shapes, completed_at)
        return items, response

    async def _store(
        self,
        result: ModelExecutionResult,
        status: str,
        shapes: list[dict[str, Any]],
        completed_at: int | None,
    ) -> None:
        execution_id = run_metadata(result).get("result_id")
        if not execution_id:  # the run itself could not be stored: nothing to index
            logger.warning("response %s not stored: its run was not stored", self.response_id)
            return
        record = ResponseRecord(
            id=self.response_id,
            principal=self.owner,
            previous_response_id=self.body.previous_response_id,
            depth=self.depth,
            execution_id=execution_id,
            model=self.body.model,
            status=status,
            input_items=self.input_items,
            output_items=shapes,
            params=self.params,
            created_at=datetime.fromtimestamp(self.created_at, UTC),
            completed_at=(
                datetime.fromtimestamp(completed_at, UTC) if completed_at is not None else None
            ),
        )
        try:
            await self.responses.asave(record)
        except Exception:  # the answer still goes out; it cannot be continued
            logger.exception("storing response %s failed", self.response_id)


def _session(body: ResponsesRequest, request: Request) -> str | None:
    if body.prompt_cache_key:
        return body.prompt_cache_key
    for header in SESSION_HEADERS:
        value = request.headers.get(header)
        if value:
            return value[:512]
    return None


async def _streamed(
    turn: Turn, chunks: AsyncIterator[StreamingChunk], ending: asyncio.Event
) -> DirectStream:
    """SSE events, unless the run fails at once (then an error status, see `first_chunk`)."""
    first = await first_chunk(chunks)
    rest = until_shutdown(chunks, ending)
    events = ResponseEvents()

    async def stream() -> AsyncIterator[bytes]:
        try:
            for event in events.start(turn.opening()):
                yield event
            chunk = await first
            while True:
                if chunk.done:
                    result = chunk.result
                    if result is None:
                        yield events.event("response.failed", response=_failed(turn, None))
                        return
                    items, response = await turn.finish(result, events.ids, events.opened)
                    last = {"completed": "response.completed", "incomplete":
                            "response.incomplete"}.get(response["status"], "response.failed")  # fmt: skip
                    for event in events.finish(items if result.success else [], response, last):
                        yield event
                    return
                for event in events.piece(chunk.content, chunk.thinking):
                    yield event
                chunk = await anext(rest)
        except ShuttingDown:
            yield events.event("response.failed", response=_failed(turn, SHUTTING_DOWN))
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    return DirectStream(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


def _failed(turn: Turn, message: str | None) -> dict[str, Any]:
    return {**turn.opening(), "status": "failed",
            "error": {"code": "server_error", "message": message or "the run failed"}}  # fmt: skip


@router.post("", response_model=None)
async def create_response(
    body: ResponsesRequest,
    runner: RunnerDep,
    responses: ResponsesDep,
    services: ServicesDep,
    request: Request,
    principal: UserDep,
) -> DirectStream | JSONResponse:
    authorize_models(request, principal, [body.model])
    if body.conversation is not None:
        raise invalid(
            "conversation is not supported: continue a stored response with previous_response_id"
        )
    tools, names = tools_of(body)
    history: list[dict[str, Any]] = []
    depth = 0
    if body.previous_response_id is not None:
        turns = await stored_conversation(responses, body.previous_response_id, principal)
        history = conversation_items(turns)
        depth = turns[-1].record.depth + 1
    items = own_items(body.input)
    if not items:
        raise invalid("input: a string or a non-empty list of input items is required")
    translated = conversation(body.instructions, history + items, names, first_input=len(history))
    if not translated.messages:
        raise invalid("input: no message to answer (only instructions were given)")
    plan = plan_of(body, tools, translated.system)
    try:
        spec = runner.request_spec(
            "chat", body.model, plan=plan, messages=translated.messages, surface="responses"
        )
    except ValueError as exc:
        raise invalid(str(exc)) from exc
    await admit_runs(request, principal)
    if history:
        earlier = conversation(body.instructions, history, names).messages
        spec.stored_history = common_prefix(earlier, translated.messages)
        spec.metadata["previous_response_id"] = str(body.previous_response_id)
    spec.session = _session(body, request)
    turn = Turn(
        body=body,
        response_id=new_id("resp"),
        created_at=int(time.time()),
        names=names,
        params=echo_params(body),
        input_items=items,
        depth=depth,
        owner=_owner(principal),
        responses=responses,
    )
    spec.metadata["response_id"] = turn.response_id
    save = body.store or services.settings.store_openai_api
    if body.stream:
        chunks = runner.astream_spec(spec, save_output=save)
        return await _streamed(turn, chunks, services.shutdown.ending)
    result = await runner.arun_spec(spec, save_output=save)
    if not result.success:
        raise failed_run_problem(result)
    _, response = await turn.finish(result)
    return JSONResponse(response)


def _stored_response(turn: StoredTurn) -> dict[str, Any]:
    record = turn.record
    answer = Answer.of_turn(turn)
    completed = record.completed_at
    return response_object(
        response_id=record.id,
        model=record.model,
        params=record.params,
        status=record.status,
        created_at=int(record.created_at.timestamp()),
        completed_at=int(completed.timestamp()) if completed is not None else None,
        output=output_items(record.output_items, answer),
        usage=usage_of(answer),
        previous_response_id=record.previous_response_id,
        error=(turn.error or "the run failed") if record.status == "failed" else None,
        incomplete_reason="max_output_tokens" if record.status == "incomplete" else None,
    )


@router.get("/{response_id}")
async def get_response(
    response_id: str, responses: ResponsesDep, principal: UserDep
) -> JSONResponse:
    turn = await responses.aget(response_id)
    if turn is None or not _readable(turn.record, principal):
        raise _not_found(response_id)
    return JSONResponse(_stored_response(turn))


@router.delete("/{response_id}")
async def delete_response(
    response_id: str, responses: ResponsesDep, principal: UserDep
) -> JSONResponse:
    found = await responses.aowner(response_id)
    if found is None or not (may_read(principal, found[0]) and principal.allows(found[1])):
        raise _not_found(response_id)
    if not await responses.adelete(response_id):
        raise _not_found(response_id)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})


@router.get("/{response_id}/input_items")
async def list_input_items(
    response_id: str,
    responses: ResponsesDep,
    principal: UserDep,
    limit: int = Query(default=20, ge=1, le=100),
    order: Literal["asc", "desc"] = Query(default="desc"),
    after: str | None = Query(default=None, max_length=200),
) -> JSONResponse:
    """The items a response was made from: those of the responses before it in its
    conversation (their input and output), then its own input. OpenAI's list shape and
    pagination (`limit`, `order`, `after` an item id)."""
    found = await responses.aowner(response_id)
    if found is None or not (may_read(principal, found[0]) and principal.allows(found[1])):
        raise _not_found(response_id)
    try:
        turns = await responses.aconversation(response_id)
    except ConversationBroken as exc:
        raise ApiError(404, "Not found", str(exc)) from exc
    if not turns:
        raise _not_found(response_id)
    items = conversation_items(turns[:-1]) + list(turns[-1].record.input_items)
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise invalid(f"after: no input item with id '{after}' in response '{response_id}'")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return JSONResponse(
        {
            "object": "list",
            "data": page,
            "first_id": page[0].get("id") if page else None,
            "last_id": page[-1].get("id") if page else None,
            "has_more": len(items) > limit,
        }
    )
