"""The OpenAI API at `/v1`: chat completions, completions, embeddings and models.

Requests are translated to the core's runs (`app.api.openai.translate`), so they are routed,
failed over and stored like any other run, as surface `openai`
(`GATEWAY_STORE_OPENAI_API`). Streams are SSE `data:` lines ending in `data: [DONE]`; an
error found before the stream starts is a JSON error reply, one found later is a last
`data: {"error": ...}` event (which OpenAI's SDKs raise) and no `[DONE]`. Errors have
OpenAI's shape (`app.api.openai.errors`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.access import Principal
from app.api.common.auth import UserDep
from app.api.common.authorization import authorize_models
from app.api.common.deps import ManagerDep, RelayDep, RunnerDep, Services, ServicesDep
from app.api.common.direct_stream import DirectStream
from app.api.common.errors import ApiError, failed_run_problem
from app.api.common.quotas import admit_runs
from app.api.common.shutdown import SHUTTING_DOWN, ShuttingDown, until_shutdown
from app.api.common.streams import first_chunk
from app.api.openai.translate import (
    SESSION_HEADER,
    ChatCompletionRequest,
    ChunkWriter,
    CompletionRequest,
    EmbeddingRequest,
    chat_completion,
    chat_messages,
    chat_plan,
    completion,
    completion_plan,
    embedding_list,
    invalid,
    model_object,
)
from app.ollama import ModelRunner
from app.ollama.names import same_model
from app.ollama.types import StreamingChunk

router = APIRouter(prefix="/v1", include_in_schema=False)


def _sse(data: Any) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


async def _streamed(
    chunks: AsyncIterator[StreamingChunk],
    writer: ChunkWriter,
    include_usage: bool,
    ending: asyncio.Event,
) -> DirectStream:
    """Start the SSE stream unless the run fails at once (then a JSON error reply). When
    the gateway's shutdown grace runs out, the run stops and a last error event says so."""
    first = await first_chunk(chunks)
    rest = until_shutdown(chunks, ending)

    async def events() -> AsyncIterator[bytes]:
        try:
            chunk = await first
            while True:
                if chunk.done:
                    result = chunk.result
                    if result is None or not result.success:
                        message = result.error_message if result else "the run failed"
                        problem = failed_run_problem(result) if result else None
                        yield _sse(
                            {
                                "error": {
                                    "message": message,
                                    "type": "api_error",
                                    "param": None,
                                    "code": problem.status if problem else None,
                                }
                            }
                        )
                        return
                    for closing in writer.ending(result):
                        yield _sse(closing)
                    if include_usage:
                        yield _sse(writer.usage(result))
                    yield b"data: [DONE]\n\n"
                    return
                if chunk.content or chunk.thinking:
                    yield _sse(writer.piece(chunk.content, chunk.thinking))
                chunk = await anext(rest)
        except ShuttingDown:
            error = {"message": SHUTTING_DOWN, "type": "api_error", "code": "shutting_down"}
            yield _sse({"error": {**error, "param": None}})
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    return DirectStream(events(), media_type="text/event-stream")


async def _run(
    runner: ModelRunner,
    body: ChatCompletionRequest | CompletionRequest,
    services: Services,
    request: Request,
    principal: Principal,
) -> DirectStream | JSONResponse:
    store = services.settings.store_openai_api
    authorize_models(request, principal, [body.model])
    chat = isinstance(body, ChatCompletionRequest)
    try:
        if isinstance(body, ChatCompletionRequest):
            spec = runner.request_spec(
                "chat",
                body.model,
                plan=chat_plan(body),
                messages=chat_messages(body.messages),
                surface="openai",
            )
            spec.session = body.prompt_cache_key or request.headers.get(SESSION_HEADER) or None
        else:
            spec = runner.request_spec(
                "generate", body.model, plan=completion_plan(body), prompt=body.prompt,
                surface="openai",
            )  # fmt: skip
    except ValueError as exc:
        raise invalid(str(exc)) from exc
    await admit_runs(request, principal)
    if body.stream:
        writer = ChunkWriter(body.model, chat=chat)
        return await _streamed(
            runner.astream_spec(spec, save_output=store),
            writer,
            body.include_usage,
            services.shutdown.ending,
        )
    result = await runner.arun_spec(spec, save_output=store)
    if not result.success:
        raise failed_run_problem(result)
    reply = chat_completion(body.model, result) if chat else completion(body.model, result)
    return JSONResponse(reply)


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest,
    runner: RunnerDep,
    services: ServicesDep,
    request: Request,
    principal: UserDep,
) -> DirectStream | JSONResponse:
    return await _run(runner, body, services, request, principal)


@router.post("/completions", response_model=None)
async def completions(
    body: CompletionRequest,
    runner: RunnerDep,
    services: ServicesDep,
    request: Request,
    principal: UserDep,
) -> DirectStream | JSONResponse:
    return await _run(runner, body, services, request, principal)


@router.post("/embeddings")
async def embeddings(
    body: EmbeddingRequest, manager: ManagerDep, request: Request, principal: UserDep
) -> JSONResponse:
    authorize_models(request, principal, [body.model])
    if body.input in ("", []):
        raise invalid("invalid input")
    if body.encoding_format not in ("float", "base64"):
        raise invalid(
            f"Invalid value for 'encoding_format' = {body.encoding_format}. "
            "Supported values: ['float', 'base64']."
        )
    await admit_runs(request, principal)
    reply = await manager.aembed(
        body.model, body.input, dimensions=body.dimensions, surface="openai"
    )
    return JSONResponse(embedding_list(body.model, reply, body.encoding_format))


@router.get("/models")
async def list_models(relay: RelayDep, principal: UserDep) -> JSONResponse:
    tags = [t for t in await relay.aunion("tags") if principal.allows(str(t.get("name")))]
    return JSONResponse({"object": "list", "data": [model_object(t) for t in tags]})


@router.get("/models/{model:path}")
async def get_model(model: str, relay: RelayDep, principal: UserDep) -> JSONResponse:
    authorize_models(request=None, principal=principal, models=[model])
    for tag in await relay.aunion("tags"):
        if same_model(str(tag.get("name") or ""), model):
            return JSONResponse(model_object(tag, model))
    raise ApiError(404, "Not found", f"model '{model}' not found")
