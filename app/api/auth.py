"""Authentication and authorisation of requests on every surface (`/gateway`, `/api`, `/v1`).

`Authorization: Bearer <key>` names an API key (see `app.access.keys`). While no key
exists and anonymous access is allowed (bound to loopback, or `GATEWAY_ALLOW_ANONYMOUS`,
and not `GATEWAY_REQUIRE_AUTH`), every request is the anonymous admin and a bearer token
is ignored (OpenAI's SDKs always send one). Otherwise a valid key is required: none or an
unknown or revoked one is 401, a user key on an admin route or a model outside the key's
allowlist is 403 (`app.api.authorization`), and a key over its rate limit is 429 with
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

from app import telemetry
from app.access import ANONYMOUS, Principal, RateLimited, anonymous_allowed
from app.access.principal import Scope
from app.api.deps import ServicesDep
from app.api.errors import ApiError
from app.ollama.usage import RunUsage, UsageObserver, run_principal, usage_sink

__all__ = ["AdminDep", "PrincipalDep", "UserDep", "require_admin", "require_user"]

BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="ollama-gateway"'}


def _unauthorized(detail: str) -> ApiError:
    return ApiError(401, "Unauthorized", detail, headers=BEARER_CHALLENGE)


bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key (`ollama-gateway keys create`), as `Authorization: Bearer <key>`.",
)


async def get_principal(
    request: Request,
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """Who is asking (once per request), after the key's rate limit is checked."""
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
    request.state.principal = principal
    if not principal.anonymous:
        run_principal.set(principal.name)
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
        if principal.tokens_per_minute is not None:
            usage_sink.set(_token_charger(services, principal))
    return principal


async def _authenticate(request: Request, services: ServicesDep) -> Principal:
    """The key's principal (or the anonymous admin); 401 for a missing or bad key."""
    settings = services.settings
    if anonymous_allowed(settings) and not await services.keys.ahas_keys():
        principal = ANONYMOUS
    else:
        header = request.headers.get("authorization")
        if not header:
            request.state.actor = "anonymous"
            raise _unauthorized("an API key is required: send 'Authorization: Bearer <key>'")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            request.state.actor = "anonymous"
            raise _unauthorized("the Authorization header must be 'Bearer <key>'")
        found = await services.keys.aauthenticate(token.strip())
        if found is None:
            request.state.actor = "invalid-key"
            raise _unauthorized("the API key is not valid (unknown or revoked)")
        principal = found
    return principal


def _token_charger(services: ServicesDep, principal: Principal) -> UsageObserver:
    def charge(usage: RunUsage) -> None:
        tokens = usage.prompt_tokens + usage.completion_tokens
        task = asyncio.ensure_future(services.limiter.charge_tokens(principal, tokens))
        services.background.add(task)
        task.add_done_callback(services.background.discard)

    return charge


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def _require(scope: Scope) -> Callable[..., Awaitable[Principal]]:
    async def check(request: Request, principal: PrincipalDep) -> Principal:
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
