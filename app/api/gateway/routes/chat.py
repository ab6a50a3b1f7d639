"""Chats: a message history in, the assistant's reply out, plain or streamed over SSE."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from app.api.common.deps import RunnerDep, ServicesDep
from app.api.common.direct_stream import SseStream
from app.api.common.errors import failed_run_problem
from app.api.gateway.bodies import chat_body
from app.api.gateway.problems import RUN_ERRORS
from app.api.gateway.schemas.common import ResultOut, execution_options
from app.api.gateway.schemas.runs import ChatRequest
from app.api.gateway.streaming import SSE_RESPONSES, stream_response

router = APIRouter(prefix="/gateway/chat", tags=["chat"])


@router.post("", operation_id="chat", response_model=ResultOut, responses=RUN_ERRORS)
async def chat(body: Annotated[ChatRequest, Depends(chat_body)], runner: RunnerDep) -> ResultOut:
    """Continue a conversation; the stored result's `prompt` is the last user message."""
    options = execution_options(body.options)
    messages = [m.model_dump() for m in body.messages]
    result = await runner.async_chat(body.model, messages, options, save_output=body.save)
    if not result.success:
        raise failed_run_problem(result)
    return ResultOut.from_result(result, (result.metadata or {}).get("result_id"))


@router.post(
    "/stream",
    operation_id="chat_stream",
    response_class=SseStream,
    responses={**RUN_ERRORS, **SSE_RESPONSES},
)
async def chat_stream(
    body: Annotated[ChatRequest, Depends(chat_body)], runner: RunnerDep, services: ServicesDep
) -> SseStream:
    """Stream a chat reply as server-sent events (`chunk`..., then `result` or `error`)."""
    options = execution_options(body.options)
    messages = [m.model_dump() for m in body.messages]
    chunks = runner.async_chat_stream(body.model, messages, options, save_output=body.save)
    return await stream_response(chunks, services.shutdown)
