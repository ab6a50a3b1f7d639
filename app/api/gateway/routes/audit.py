"""The audit log (admin): who did what, newest first, with filters."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query

from app.api.common.deps import ServicesDep
from app.api.gateway.schemas.access import AuditOut, AuditPage
from app.api.gateway.schemas.common import IsoDateTime

router = APIRouter(prefix="/gateway/audit", tags=["audit"])


@router.get("", operation_id="list_audit", response_model=AuditPage)
async def list_audit(
    services: ServicesDep,
    actor: str | None = Query(default=None, max_length=200, description="A key's name."),
    action: str | None = Query(
        default=None, max_length=100, description="e.g. `POST /gateway/generate`."
    ),
    outcome: Literal["allowed", "denied", "failed"] | None = Query(default=None),
    model: str | None = Query(default=None, max_length=512, description="The target model."),
    surface: Literal["gateway", "ollama", "openai", "anthropic", "responses"] | None = Query(
        default=None
    ),
    since: IsoDateTime | None = Query(default=None, description="At or after."),
    until: IsoDateTime | None = Query(default=None, description="Before."),
    limit: int = Query(default=100, ge=1, le=1000),
) -> AuditPage:
    """Audit entries, newest first; every request answered before this one is included."""
    await services.audit.flush()
    rows = await services.audit.store.alist(
        actor=actor,
        action=action,
        outcome=outcome,
        target=model,
        surface=surface,
        since=since,
        until=until,
        limit=limit,
    )
    return AuditPage(items=[AuditOut.model_validate(r) for r in rows])
