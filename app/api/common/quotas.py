"""Quotas checked before a request starts runs, on every surface.

`await admit_runs(request, principal)` right after the model check: a key (or its team)
whose quota is spent gets a 429 in the surface's own shape, naming the quota, with
`Retry-After` at its window's end (`app.access.quotas`). An admitted request is counted
(`requests_per_day`); its runs' tokens and backend time are charged when they end.
"""

from __future__ import annotations

from fastapi import Request

from app.access import Principal
from app.access.quotas import QuotaSpent
from app.api.common.deps import Services
from app.api.common.errors import ApiError

__all__ = ["admit_runs", "quota_error"]


def quota_error(exc: QuotaSpent) -> ApiError:
    """The 429 of a spent quota, as every surface renders it."""
    return ApiError(429, "Quota spent", str(exc), headers={"Retry-After": str(exc.retry_after)})


async def admit_runs(request: Request, principal: Principal) -> None:
    """429 when the key's or its team's quota is spent; else the request is counted."""
    services: Services = request.app.state.services
    try:
        await services.quotas.aadmit(principal)
    except QuotaSpent as exc:
        raise quota_error(exc) from exc
