"""Batches: many prompts on one model with a concurrency limit."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from app.api.deps import OutputsDep, RunnerDep
from app.api.limits import batch_body
from app.api.reports import NOT_FOUND, report_detail, report_page
from app.api.routes.generate import RUN_ERRORS
from app.api.schemas.common import ResultOut
from app.api.schemas.runs import BatchOut, BatchRequest
from app.api.schemas.stored import ReportDetail, ReportPage
from app.ollama.outputs import CURSOR_PATTERN

router = APIRouter(prefix="/gateway/batches", tags=["batches"])


@router.post("", operation_id="run_batch", response_model=BatchOut, responses=RUN_ERRORS)
async def run_batch(
    body: Annotated[BatchRequest, Depends(batch_body)], runner: RunnerDep
) -> BatchOut:
    """Run every prompt (at most `max_concurrent` at once); results in prompt order.

    One prompt's failure is its own failed result and does not stop the others.
    """
    options = body.options.to_execution_options() if body.options else None
    results = await runner.async_run_batch(
        body.model,
        body.prompts,
        options,
        max_concurrent=body.max_concurrent,
        batch_name=body.name,
    )
    batch_ids = {(r.metadata or {}).get("batch_id") for r in results} - {None}
    return BatchOut(
        id=next(iter(batch_ids)) if len(batch_ids) == 1 else None,
        model=body.model,
        results=[ResultOut.from_result(r, (r.metadata or {}).get("result_id")) for r in results],
        succeeded=sum(r.success for r in results),
        failed=sum(not r.success for r in results),
    )


@router.get("", operation_id="list_batches", response_model=ReportPage)
async def list_batches(
    outputs: OutputsDep,
    model: str | None = Query(default=None, max_length=512),
    limit: int = Query(default=50, ge=1, le=500),
    cursor: str | None = Query(
        default=None, pattern=CURSOR_PATTERN, description="The `next_cursor` of the page before."
    ),
) -> ReportPage:
    """Stored batches, newest first."""
    return await report_page(outputs, "batch", model=model, limit=limit, cursor=cursor)


@router.get(
    "/{batch_id}", operation_id="get_batch", response_model=ReportDetail, responses=NOT_FOUND
)
async def get_batch(batch_id: str, outputs: OutputsDep) -> ReportDetail:
    """One batch with its runs, in prompt order."""
    return await report_detail(outputs, "batch", batch_id)
