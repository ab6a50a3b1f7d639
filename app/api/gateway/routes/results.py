"""Stored runs: list with filters and cursor pagination, get, delete, stats, cleanup."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Query, Response, status

from app.api.common.auth import UserDep, require_admin
from app.api.common.deps import OutputsDep, ServicesDep
from app.api.common.errors import ApiError
from app.api.common.ownership import owner_of, readable_result
from app.api.gateway.problems import Problem
from app.api.gateway.schemas.common import IsoDateTime
from app.api.gateway.schemas.stored import (
    CleanupOut,
    CleanupRequest,
    Kind,
    OutputStats,
    ResultPage,
    StoredResult,
    Surface,
)
from app.ollama.outputs import CURSOR_PATTERN

router = APIRouter(prefix="/gateway/results", tags=["results"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No stored result with that id."},
    503: {
        "model": Problem,
        "description": "The database does not answer, or results wait in the spool to be "
        "written to it (this one may be among them); retry later (`Retry-After`).",
    },
}


async def not_found(result_id: str, services: ServicesDep) -> ApiError:
    """404, or 503 while spooled results wait: the id may be one of theirs, answered with
    a 200 during a database outage and readable once the spool is written (seconds)."""
    if await asyncio.to_thread(services.spool.has_pending):
        return ApiError(
            503,
            "Result not yet stored",
            f"no stored result with id '{result_id}' yet; results spooled while the database "
            "did not answer are being written to it: retry later",
            headers={"Retry-After": "1"},
        )
    return ApiError(404, "Result not found", f"no stored result with id '{result_id}'")


@router.get("", operation_id="list_results", response_model=ResultPage)
async def list_results(
    outputs: OutputsDep,
    principal: UserDep,
    model: str | None = Query(default=None, max_length=512, description="Only this model."),
    kind: Kind | None = Query(default=None, description="Only runs of this kind."),
    surface: Surface | None = Query(
        default=None, description="Only runs that came through this API."
    ),
    success: bool | None = Query(default=None, description="Only successes, or failures."),
    since: IsoDateTime | None = Query(default=None, description="Created at or after."),
    until: IsoDateTime | None = Query(default=None, description="Created before."),
    limit: int = Query(default=50, ge=1, le=500),
    cursor: str | None = Query(
        default=None, pattern=CURSOR_PATTERN, description="The `next_cursor` of the page before."
    ),
) -> ResultPage:
    """Stored runs, newest first; pass `next_cursor` back as `cursor` for the next page.
    A user key sees only the runs made with it."""
    try:
        items, next_cursor = await outputs.alist_results(
            principal=owner_of(principal),
            model=model,
            kind=kind,
            surface=surface,
            success=success,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
        )
    except ValueError as exc:
        raise ApiError(422, "Invalid cursor", str(exc)) from exc
    return ResultPage(
        items=[StoredResult.model_validate(i) for i in items if readable_result(i, principal)],
        next_cursor=next_cursor,
    )


@router.get("/stats", operation_id="get_result_stats", response_model=OutputStats)
async def get_result_stats(outputs: OutputsDep, principal: UserDep) -> OutputStats:
    """Counts and sizes of what is stored, per type (a user key: of its own runs and
    reports)."""
    stats = await outputs.aget_output_stats(principal=owner_of(principal))
    return OutputStats.model_validate(stats)


@router.post(
    "/cleanup",
    operation_id="cleanup_results",
    response_model=CleanupOut,
    dependencies=[Depends(require_admin)],
)
async def cleanup_results(body: CleanupRequest, outputs: OutputsDep) -> CleanupOut:
    """Delete runs, reports and finished jobs older than `days_old` days (model configs
    are kept)."""
    return CleanupOut(removed=await outputs.acleanup_old_outputs(body.days_old))


@router.get(
    "/{result_id}", operation_id="get_result", response_model=StoredResult, responses=NOT_FOUND
)
async def get_result(
    result_id: str, outputs: OutputsDep, principal: UserDep, services: ServicesDep
) -> StoredResult:
    """One stored run (a user key sees only its own). A run answered while the database
    did not answer is readable once the spool has been written to it: until then 503."""
    item = await outputs.aget_result(result_id)
    if item is None:
        raise await not_found(result_id, services)
    if not readable_result(item, principal):
        raise ApiError(404, "Result not found", f"no stored result with id '{result_id}'")
    return StoredResult.model_validate(item)


@router.delete(
    "/{result_id}",
    operation_id="delete_result",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=NOT_FOUND,
)
async def delete_result(
    result_id: str, outputs: OutputsDep, principal: UserDep, services: ServicesDep
) -> Response:
    """Delete one stored run (a user key only its own)."""
    item = await outputs.aget_result(result_id)
    if item is None:
        raise await not_found(result_id, services)
    if (
        item is None
        or not readable_result(item, principal)
        or not await outputs.adelete_result(result_id)
    ):
        raise ApiError(404, "Result not found", f"no stored result with id '{result_id}'")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
