"""Authorization rules: which models a key may use, and who may see the gateway's internals.

Authentication (who is asking) is `app.api.auth`'s; reading what was stored (results,
reports, jobs) is `app.api.ownership`'s.
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import Request

from app.access import Principal, anonymous_allowed
from app.api.deps import ServicesDep
from app.api.errors import ApiError

__all__ = ["authorize_models", "sees_details"]


def authorize_models(request: Request | None, principal: Principal, models: Iterable[str]) -> None:
    """403 unless the key may use every model named; they are the audit entry's target."""
    names = [m for m in models if m]
    if names and request is not None and getattr(request.state, "audit_target", None) is None:
        request.state.audit_target = ",".join(names)[:512]
    denied = principal.denied(names)
    if denied:
        allowed = ", ".join(principal.models or ())
        raise ApiError(
            403,
            "Forbidden",
            f"key {principal.name!r} may not use model {denied[0]!r} (allowed: {allowed})",
        )


async def sees_details(request: Request, services: ServicesDep) -> bool:
    """Whether a probe's caller may see internals (backend URLs, errors): an admin key, or
    anyone while no key is needed. Never raises: a probe answers everyone."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    try:
        if anonymous_allowed(services.settings) and not await services.keys.ahas_keys():
            return True
        if scheme.lower() != "bearer" or not token.strip():
            return False
        principal = await services.keys.aauthenticate(token.strip())
    except Exception:  # the database is down: the probe says so, without details
        return False
    return principal is not None and principal.is_admin
