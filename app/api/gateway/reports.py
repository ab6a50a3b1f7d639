"""Listing and fetching stored reports (batches, benchmarks, comparisons): the two read
routes each of their routers serves, made by `add_report_routes`.
Who may read which report is `app.api.common.ownership`'s rule.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Query

from app.access import Principal
from app.api.common.auth import UserDep
from app.api.common.deps import OutputsDep
from app.api.common.errors import ApiError
from app.api.common.ownership import owner_of, readable_report
from app.api.gateway.problems import Problem
from app.api.gateway.schemas.stored import ReportDetail, ReportPage, ReportSummary
from app.ollama import OutputManager
from app.ollama.outputs import CURSOR_PATTERN, ReportKind

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No stored report with that id."}
}


async def report_page(
    outputs: OutputManager,
    kind: ReportKind,
    principal: Principal,
    *,
    model: str | None,
    limit: int,
    cursor: str | None,
) -> ReportPage:
    """One page of the stored reports of `kind` that `principal` may read, newest first
    (422 for a cursor that is not one of ours)."""
    try:
        items, next_cursor = await outputs.alist_reports(
            kind, model=model, limit=limit, cursor=cursor, principal=owner_of(principal)
        )
    except ValueError as exc:
        raise ApiError(422, "Invalid cursor", str(exc)) from exc
    readable = (readable_report(i, principal) for i in items)
    return ReportPage(
        items=[ReportSummary.model_validate(i) for i in readable if i is not None],
        next_cursor=next_cursor,
    )


async def report_detail(
    outputs: OutputManager, kind: ReportKind, report_id: str, principal: Principal
) -> ReportDetail:
    """One stored report of `kind` with its runs, as `principal` may see it (404 when there
    is none with that id or it is not the caller's to read)."""
    item = await outputs.aget_report(kind, report_id, principal=owner_of(principal))
    readable = readable_report(item, principal) if item is not None else None
    if readable is None:
        raise ApiError(404, "Report not found", f"no stored {kind} with id '{report_id}'")
    return ReportDetail.model_validate(readable)


async def _no_model_filter() -> None:
    """`model` of a listing that has no such query parameter: always None."""
    return None


def add_report_routes(
    router: APIRouter,
    kind: ReportKind,
    *,
    list_operation: str,
    list_doc: str,
    get_operation: str,
    get_doc: str,
    model_filter: bool,
) -> None:
    """Add to `router` the two routes that read its stored reports of `kind`:

    - `GET ""`, operation `list_operation`: one page of them (`report_page`), with the
      query parameters `limit` and `cursor`, and `model` when `model_filter`;
    - `GET "/{<kind>_id}"`, operation `get_operation`: one of them (`report_detail`).

    The operation ids are also the routes' names (their OpenAPI summaries come from them);
    `list_doc` and `get_doc` are their descriptions. Call it after the router's other
    routes, so that a more specific path added before (`/jobs/...`) keeps precedence.
    """
    # Without a model filter `model` is not a query parameter, just always None.
    model_param = Query(default=None, max_length=512) if model_filter else Depends(_no_model_filter)

    @router.get(
        "",
        operation_id=list_operation,
        name=list_operation,
        description=list_doc,
        response_model=ReportPage,
    )
    async def list_reports(
        outputs: OutputsDep,
        principal: UserDep,
        model: str | None = model_param,
        limit: int = Query(default=50, ge=1, le=500),
        cursor: str | None = Query(
            default=None,
            pattern=CURSOR_PATTERN,
            description="The `next_cursor` of the page before.",
        ),
    ) -> ReportPage:
        return await report_page(outputs, kind, principal, model=model, limit=limit, cursor=cursor)

    @router.get(
        f"/{{{kind}_id}}",
        operation_id=get_operation,
        name=get_operation,
        description=get_doc,
        response_model=ReportDetail,
        responses=NOT_FOUND,
    )
    async def get_report(
        outputs: OutputsDep, principal: UserDep, report_id: str = Path(alias=f"{kind}_id")
    ) -> ReportDetail:
        return await report_detail(outputs, kind, report_id, principal)
