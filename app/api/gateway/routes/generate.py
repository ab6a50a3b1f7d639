"""Generations: plain, with context documents, and streamed over SSE."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from app.api.common.deps import services_of
from app.api.common.direct_stream import SseStream
from app.api.common.errors import failed_run_problem
from app.api.gateway.bodies import generate_body
from app.api.gateway.problems import RUN_ERRORS
from app.api.gateway.schemas.common import ResultOut, execution_options
from app.api.gateway.schemas.runs import GenerateRequest
from app.api.gateway.streaming import SSE_RESPONSES, stream_response

router = APIRouter(prefix="/gateway/generate", tags=["generate"])


@router.post("", operation_id="generate", response_model=ResultOut, responses=RUN_ERRORS)
async def generate(
    body: Annotated[GenerateRequest, Depends(generate_body)], request: Request
) -> ResultOut:
    """Run one generation and store it; with `context_docs`, the documents go in the prompt.

    A failed run is stored too: the error's `result_id` names it.
    """
    runner = services_of(request).runner
    options = execution_options(body.options)
    if body.context_docs is not None:
        result = await runner.arun_with_context(
            body.model, body.prompt, body.context_docs, options, save_output=body.save
        )
    else:
        result = await runner.async_generate(
            body.model, body.prompt, options, save_output=body.save
        )
    if not result.success:
        raise failed_run_problem(result)
    return ResultOut.from_result(result, (result.metadata or {}).get("result_id"))


@router.post(
    "/stream",
    operation_id="generate_stream",
    response_class=SseStream,
    responses={**RUN_ERRORS, **SSE_RESPONSES},
)
async def generate_stream(
    body: Annotated[GenerateRequest, Depends(generate_body)], request: Request
) -> SseStream:
    """Stream a generation as server-sent events (`chunk`..., then `result` or `error`)."""
    services = services_of(request)
    runner = services.runner
    options = execution_options(body.options)
    if body.context_docs is not None:
        chunks = runner.async_context_stream(
            body.model, body.prompt, body.context_docs, options, save_output=body.save
        )
    else:
        chunks = runner.async_generate_stream(
            body.model, body.prompt, options, save_output=body.save
        )
    return await stream_response(chunks, services.shutdown)
