"""Authorization rules: which models a key may use, and who may see the gateway's internals.

Authentication (who is asking) is `app.api.common.auth`'s; reading what was stored (results,
reports, jobs) is `app.api.common.ownership`'s.
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import Request

from app.access import Principal, anonymous_allowed
from app.api.common.auth import presented_key
from app.api.common.deps import ServicesDep
from app.api.common.errors import ApiError

__all__ = ["authorize_models", "sees_details"]


def authorize_models(request: Request | None, principal: Principal, models: Iterable[str]) -> None:
    """403 unless the key may use every model named; they are the audit entry's target."""
    names = [m for m in models if m]
    if names and request is not None and getattr(request.state, "audit_target", None) is None:
        request.state.audit_target = ",".join(names)[:512]
    denied = principal.denied(names)
    if denied:
        allowed = ", ".join(principal.models or ("any",))
        if principal.team_models is not None:
            allowed += f"; its team {principal.team!r}: {', '.join(principal.team_models)}"
        raise ApiError(
            403,
            "Forbidden",
            f"key {principal.name!r} may not use model {denied[0]!r} (allowed: {allowed})",
        )


async def sees_details(request: Request, services: ServicesDep) -> bool:
    """Whether a probe's caller may see internals (backend URLs, errors): an admin key, or
    anyone while no key is needed. Never raises: a probe answers everyone."""
    token = presented_key(request)
    try:
        if anonymous_allowed(services.settings) and not await services.keys.ahas_keys():
            return True
        if not token:
            return False
        principal = await services.keys.aauthenticate(token)
    except Exception:  # the database is down: the probe says so, without details
        return False
    return principal is not None and principal.is_admin
