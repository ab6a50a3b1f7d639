"""Authentication and authorisation of requests on every surface (`/gateway`, `/api`, `/v1`).

`Authorization: Bearer <key>` (or `x-api-key: <key>`, as Anthropic's clients send it) names
an API key (see `app.access.keys`). While no key
exists and anonymous access is allowed (bound to loopback, or `GATEWAY_ALLOW_ANONYMOUS`,
and not `GATEWAY_REQUIRE_AUTH`), every request is the anonymous admin and a bearer token
is ignored (OpenAI's SDKs always send one). Otherwise a valid key is required: none or an
unknown or revoked one is 401, a user key on an admin route or a model outside the key's
allowlist is 403 (`app.api.common.authorization`), and a key over its rate limit is 429 with
`Retry-After`.

The principal is kept in `request.state.principal` (the audit log and access log read it)
and in the core's `run_principal` (stored runs are filed under the key's name); a key
with a token limit gets a `usage_sink` that charges each finished run's tokens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.access import ANONYMOUS, Principal, RateLimited, anonymous_allowed
from app.access.principal import Scope
from app.api.common.deps import Services
from app.api.common.errors import ApiError
from app.observability import telemetry
from app.ollama.usage import RunUsage, UsageObserver, run_principal, run_team, usage_sink

__all__ = [
    "AdminDep",
    "PrincipalDep",
    "UserDep",
    "presented_key",
    "principal_of",
    "require_admin",
    "require_user",
]

BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="ollama-gateway"'}


def _unauthorized(detail: str) -> ApiError:
    return ApiError(401, "Unauthorized", detail, headers=BEARER_CHALLENGE)


bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key (`ollama-gateway keys create`), as `Authorization: Bearer <key>`.",
)


PRINCIPAL_KEY = "gateway.principal"
"""Where a request's principal is kept in its ASGI scope once found (once per request)."""

Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
"""The bearer scheme, declared for the OpenAPI document; the key itself is read from the
headers (`presented_key`), so it costs no more than this one dependency."""


async def get_principal(request: Request, _: Credentials) -> Principal:
    """Who is asking (once per request), after the key's rate limit is checked.

    One dependency with one sub-dependency (the bearer scheme): the services come from the
    app's state rather than through FastAPI's graph, whose bookkeeping per dependency cost
    more than the key check itself on the hot routes (bench/RESULTS.md, issue 30)."""
    return await principal_of(request)


async def principal_of(request: Request) -> Principal:
    """The request's principal, found, checked and rate-limited on the first call."""
    cached: Principal | None = request.scope.get(PRINCIPAL_KEY)
    if cached is not None:
        return cached
    services: Services = request.app.state.services
    if telemetry.enabled():
        with telemetry.span("gateway.auth.key_check") as span:
            principal = await _authenticate(request, services)
            telemetry.set_attributes(
                {
                    "gateway.key.name": principal.name,
                    "gateway.key.scope": principal.scope,
                    "gateway.key.anonymous": principal.anonymous,
                },
                on=span,
            )
    else:
        principal = await _authenticate(request, services)
    request.state.principal = principal
    if not principal.anonymous:
        run_principal.set(principal.name)
        run_team.set(principal.team)
        await _rate_limit(services, principal)
        if principal.tokens_per_minute is not None:
            usage_sink.set(_token_charger(services, principal))
    request.scope[PRINCIPAL_KEY] = principal
    return principal


async def _rate_limit(services: Services, principal: Principal) -> None:
    """429 with `Retry-After` when the key is over its rate limit."""
    with telemetry.span("gateway.rate_limit", {"gateway.key.name": principal.name}) as span:
        try:
            await services.limiter.acquire(principal)
        except RateLimited as exc:
            telemetry.set_attributes({"gateway.rate_limit.limited": True}, on=span)
            raise ApiError(
                429,
                "Too many requests",
                f"key {principal.name!r}: {exc}",
                headers={"Retry-After": str(exc.retry_after)},
            ) from exc
        telemetry.set_attributes({"gateway.rate_limit.limited": False}, on=span)


async def _authenticate(request: Request, services: Services) -> Principal:
    """The key's principal (or the anonymous admin); 401 for a missing or bad key."""
    settings = services.settings
    if anonymous_allowed(settings) and not await services.keys.ahas_keys():
        principal = ANONYMOUS
    else:
        token = presented_key(request)
        if token is None:
            request.state.actor = "anonymous"
            raise _unauthorized(
                "an API key is required: send 'Authorization: Bearer <key>' (or 'x-api-key: <key>')"
            )
        if not token:
            request.state.actor = "anonymous"
            raise _unauthorized("the Authorization header must be 'Bearer <key>'")
        found = await services.keys.aauthenticate(token)
        if found is None:
            request.state.actor = "invalid-key"
            raise _unauthorized("the API key is not valid (unknown or revoked)")
        principal = found
    return principal


def presented_key(request: Request) -> str | None:
    """The key a request presents: `Authorization: Bearer <key>`, else `x-api-key: <key>`
    (Anthropic's header, which Claude Code sends with `ANTHROPIC_API_KEY`). None when it
    presents none; "" when its `Authorization` header is not a bearer token."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else ""
    api_key = request.headers.get("x-api-key", "").strip()
    return api_key or None


def _token_charger(services: Services, principal: Principal) -> UsageObserver:
    def charge(usage: RunUsage) -> None:
        tokens = usage.prompt_tokens + usage.completion_tokens
        task = asyncio.ensure_future(services.limiter.charge_tokens(principal, tokens))
        services.background.add(task)
        task.add_done_callback(services.background.discard)

    return charge


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def _require(scope: Scope) -> Callable[..., Awaitable[Principal]]:
    async def check(request: Request, _: Credentials) -> Principal:
        principal = await principal_of(request)
        if scope == "admin" and not principal.is_admin:
            raise ApiError(
                403,
                "Forbidden",
                f"this needs an admin key; key {principal.name!r} has scope {principal.scope}",
            )
        return principal

    return check


require_user = _require("user")
require_admin = _require("admin")
UserDep = Annotated[Principal, Depends(require_user)]
AdminDep = Annotated[Principal, Depends(require_admin)]
