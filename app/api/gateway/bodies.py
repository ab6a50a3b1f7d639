"""Request bodies as routes receive them: schema-valid, allowed for the caller's key, and
within the deployment's limits.

A route takes `body: Annotated[GenerateRequest, Depends(generate_body)]` and receives a
body whose models the key may use (`app.api.common.authorization`, else 403) and that keeps to
the `GATEWAY_MAX_*` limits (`app.api.gateway.limits`, else 422 naming the field).
"""

from __future__ import annotations

from typing import TypeVar

from fastapi import Request

from app.access import Principal
from app.api.common.auth import principal_of
from app.api.common.authorization import authorize_models
from app.api.common.deps import Services
from app.api.common.quotas import admit_runs
from app.api.gateway.limits import LimitChecker
from app.api.gateway.schemas.runs import (
    BatchRequest,
    BenchmarkRequest,
    ChatRequest,
    ComparisonRequest,
    ComparisonStreamRequest,
    GenerateRequest,
)
from app.settings import Settings


async def _caller(request: Request) -> tuple[Settings, Principal]:
    """The settings and the caller's principal, without dependencies of their own: the
    body's dependency is the route's only one besides the key check (issue 30)."""
    services: Services = request.app.state.services
    return services.settings, await principal_of(request)


PromptListBody = TypeVar("PromptListBody", BatchRequest, BenchmarkRequest)
"""A body of many prompts for one model (see `_prompt_list_body`)."""


async def generate_body(body: GenerateRequest, request: Request) -> GenerateRequest:
    settings, principal = await _caller(request)
    authorize_models(request, principal, [body.model])
    checker = LimitChecker(settings).text(("prompt",), body.prompt).options(body.options)
    checker.texts(("context_docs",), body.context_docs, settings.max_context_docs).check()
    await admit_runs(request, principal)
    return body


async def chat_body(body: ChatRequest, request: Request) -> ChatRequest:
    settings, principal = await _caller(request)
    authorize_models(request, principal, [body.model])
    checker = LimitChecker(settings).options(body.options)
    checker.count(("messages",), body.messages, settings.max_messages)
    for i, message in enumerate(body.messages):
        checker.text(("messages", i, "content"), message.content)
    checker.check()
    await admit_runs(request, principal)
    return body


async def batch_body(body: BatchRequest, request: Request) -> BatchRequest:
    settings, principal = await _caller(request)
    checked = _prompt_list_body(body, "prompts", body.prompts, settings, request, principal)
    await admit_runs(request, principal)
    return checked


async def benchmark_body(body: BenchmarkRequest, request: Request) -> BenchmarkRequest:
    settings, principal = await _caller(request)
    checked = _prompt_list_body(
        body, "test_prompts", body.test_prompts, settings, request, principal
    )
    await admit_runs(request, principal)
    return checked


async def comparison_body(body: ComparisonRequest, request: Request) -> ComparisonRequest:
    settings, principal = await _caller(request)
    _check_comparison(body, settings, request, principal)
    await admit_runs(request, principal)
    return body


async def comparison_stream_body(
    body: ComparisonStreamRequest, request: Request
) -> ComparisonStreamRequest:
    settings, principal = await _caller(request)
    _check_comparison(body, settings, request, principal)
    await admit_runs(request, principal)
    return body


def _check_comparison(
    body: ComparisonStreamRequest, settings: Settings, request: Request, principal: Principal
) -> None:
    authorize_models(request, principal, body.models)
    checker = LimitChecker(settings).options(body.options).text(("prompt",), body.prompt)
    checker.count(("models",), body.models, settings.max_comparison_models).check()


def _prompt_list_body(
    body: PromptListBody,
    field: str,
    prompts: list[str],
    settings: Settings,
    request: Request,
    principal: Principal,
) -> PromptListBody:
    """A body of many prompts for one model (a batch, a benchmark), as its route gets it:
    the key may use the model (else 403), and the options, the number of prompts
    (`max_batch_prompts`) and each prompt's length keep to the limits (else 422 naming
    `field`, the body's field that holds `prompts`)."""
    authorize_models(request, principal, [body.model])
    checker = LimitChecker(settings).options(body.options)
    checker.texts((field,), prompts, settings.max_batch_prompts).check()
    return body
