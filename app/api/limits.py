"""Limits that protect the service, from Settings (`GATEWAY_MAX_*`).

The request schemas carry hard caps (they are in the OpenAPI spec); these settings can
lower them per deployment. A request over a limit gets the same 422 problem a schema
violation gets, naming the field; a body over `max_body_bytes` gets 413.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.auth import PrincipalDep, check_models
from app.api.deps import SettingsDep
from app.api.errors import problem_response
from app.api.schemas.common import OptionsIn
from app.api.schemas.runs import (
    BatchRequest,
    BenchmarkRequest,
    ChatRequest,
    ComparisonRequest,
    GenerateRequest,
)
from app.settings import Settings

Loc = tuple[str | int, ...]


class LimitChecker:
    """Collects every limit a body breaks, then raises one validation error for all."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.errors: list[dict[str, Any]] = []

    def _fail(self, loc: Loc, msg: str) -> None:
        self.errors.append({"loc": ("body", *loc), "msg": msg, "type": "limit_exceeded"})

    def text(self, loc: Loc, value: str | None) -> LimitChecker:
        limit = self.settings.max_prompt_chars
        if value is not None and len(value) > limit:
            self._fail(loc, f"is {len(value)} characters long; the limit is {limit}")
        return self

    def texts(self, loc: Loc, values: Sequence[str] | None, max_items: int) -> LimitChecker:
        if values is None:
            return self
        if len(values) > max_items:
            self._fail(loc, f"has {len(values)} items; the limit is {max_items}")
        for i, value in enumerate(values):
            self.text((*loc, i), value)
        return self

    def options(self, options: OptionsIn | None) -> LimitChecker:
        limit = self.settings.max_tokens_limit
        if options is not None and options.max_tokens is not None and options.max_tokens > limit:
            self._fail(("options", "max_tokens"), f"is {options.max_tokens}; the limit is {limit}")
        if options is not None:
            self.text(("options", "system_prompt"), options.system_prompt)
        return self

    def count(self, loc: Loc, items: Sequence[Any], max_items: int) -> LimitChecker:
        if len(items) > max_items:
            self._fail(loc, f"has {len(items)} items; the limit is {max_items}")
        return self

    def check(self) -> None:
        if self.errors:
            raise RequestValidationError(self.errors)


class BodySizeLimit:
    """Refuse request bodies over `max_bytes` with 413, before any route reads them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        if declared is not None:
            await self.app(scope, receive, send)
            return
        # No length given (chunked): read up to the limit, then replay what was read.
        body, messages = 0, []
        while True:
            message = await receive()
            messages.append(message)
            body += len(message.get("body", b""))
            if body > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            if message["type"] != "http.request" or not message.get("more_body"):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            413,
            "Request body too large",
            f"the body is larger than the limit of {self.max_bytes} bytes",
        )
        await response(scope, receive, send)


# Dependencies: a route takes `body: Annotated[GenerateRequest, Depends(generate_body)]`
# and receives a body that passed both its schema and the deployment's limits.


async def generate_body(
    body: GenerateRequest, settings: SettingsDep, request: Request, principal: PrincipalDep
) -> GenerateRequest:
    check_models(request, principal, [body.model])
    checker = LimitChecker(settings).text(("prompt",), body.prompt).options(body.options)
    checker.texts(("context_docs",), body.context_docs, settings.max_context_docs).check()
    return body


async def chat_body(
    body: ChatRequest, settings: SettingsDep, request: Request, principal: PrincipalDep
) -> ChatRequest:
    check_models(request, principal, [body.model])
    checker = LimitChecker(settings).options(body.options)
    checker.count(("messages",), body.messages, settings.max_messages)
    for i, message in enumerate(body.messages):
        checker.text(("messages", i, "content"), message.content)
    checker.check()
    return body


async def batch_body(
    body: BatchRequest, settings: SettingsDep, request: Request, principal: PrincipalDep
) -> BatchRequest:
    check_models(request, principal, [body.model])
    checker = LimitChecker(settings).options(body.options)
    checker.texts(("prompts",), body.prompts, settings.max_batch_prompts).check()
    return body


async def benchmark_body(
    body: BenchmarkRequest, settings: SettingsDep, request: Request, principal: PrincipalDep
) -> BenchmarkRequest:
    check_models(request, principal, [body.model])
    checker = LimitChecker(settings).options(body.options)
    checker.texts(("test_prompts",), body.test_prompts, settings.max_batch_prompts).check()
    return body


async def comparison_body(
    body: ComparisonRequest, settings: SettingsDep, request: Request, principal: PrincipalDep
) -> ComparisonRequest:
    check_models(request, principal, body.models)
    checker = LimitChecker(settings).options(body.options).text(("prompt",), body.prompt)
    checker.count(("models",), body.models, settings.max_comparison_models).check()
    return body
