"""Listing and fetching stored reports (batches, benchmarks, comparisons): one helper for
the three routers that serve them.
Who may read which report is `app.api.ownership`'s rule.
"""

from __future__ import annotations

from typing import Any

from app.access import Principal
from app.api.errors import ApiError, Problem
from app.api.ownership import owner_of, readable_report
from app.api.schemas.stored import ReportDetail, ReportPage, ReportSummary
from app.ollama import OutputManager
from app.ollama.outputs import ReportKind

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
    item = await outputs.aget_report(kind, report_id, principal=owner_of(principal))
    readable = readable_report(item, principal) if item is not None else None
    if readable is None:
        raise ApiError(404, "Report not found", f"no stored {kind} with id '{report_id}'")
    return ReportDetail.model_validate(readable)
