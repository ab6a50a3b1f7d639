"""A key's quotas and its team's, with what is used and left in each window."""

from __future__ import annotations

from fastapi import APIRouter, Query

from app.api.common.auth import UserDep
from app.api.common.deps import ServicesDep
from app.api.common.errors import ApiError
from app.api.gateway.problems import Problem
from app.api.gateway.schemas.access import QuotasOut

router = APIRouter(prefix="/gateway/quotas", tags=["quotas"])


@router.get(
    "",
    operation_id="get_quotas",
    response_model=QuotasOut,
    responses={404: {"model": Problem, "description": "No active key has that name."}},
)
async def get_quotas(
    principal: UserDep,
    services: ServicesDep,
    key: str | None = Query(
        default=None,
        max_length=200,
        description="Another key's name (admins only); default: the caller's own key.",
    ),
) -> QuotasOut:
    """The caller's quotas and its team's: each quota with its window, what is used and
    what is left (a quota not set shows what is used, with `limit` null). Used counts are
    this replica's view: other replicas' use is added within `GATEWAY_QUOTA_SYNC_SECONDS`."""
    subject = principal
    if key is not None and key != principal.name:
        if not principal.is_admin:
            raise ApiError(403, "Forbidden", f"key {principal.name!r} may see only its own quotas")
        found = await services.keys.aprincipal_named(key)
        if found is None:
            raise ApiError(404, "Not found", f"no active key named {key!r}")
        subject = found
    return QuotasOut(**await services.quotas.astatus(subject))
