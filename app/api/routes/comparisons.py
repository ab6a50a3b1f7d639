"""Comparisons: one prompt on several models, side by side."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, status
from fastapi.responses import JSONResponse

from app.api.auth import UserDep
from app.api.bodies import comparison_body
from app.api.deps import OutputsDep, RunnerDep, ServicesDep
from app.api.errors import RUN_ERRORS
from app.api.reports import NOT_FOUND, report_detail, report_page
from app.api.routes.jobs import JOB_STARTED, job_started, owner_name, runs_in_background
from app.api.schemas.common import execution_options
from app.api.schemas.runs import ComparisonRequest, ReportOut
from app.api.schemas.stored import ReportDetail, ReportPage
from app.ollama.metadata import group_id_of
from app.ollama.outputs import CURSOR_PATTERN

router = APIRouter(prefix="/gateway/comparisons", tags=["comparisons"])


@router.post(
    "",
    operation_id="run_comparison",
    response_model=ReportOut,
    status_code=status.HTTP_201_CREATED,
    responses={**RUN_ERRORS, **JOB_STARTED},
)
async def run_comparison(
    body: Annotated[ComparisonRequest, Depends(comparison_body)],
    runner: RunnerDep,
    services: ServicesDep,
    principal: UserDep,
) -> ReportOut | JSONResponse:
    """Run the prompt on each model in turn: `results` per model and a `summary` naming
    the fastest model, the highest tokens/s, response lengths and failures."""
    options = execution_options(body.options)
    if runs_in_background(body.background, len(body.models), services.settings):
        job = await services.jobs.asubmit_comparison(
            body.models, body.prompt, options, owner=owner_name(principal)
        )
        return job_started(job)
    report = await runner.acreate_model_comparison(body.models, body.prompt, options)
    return ReportOut(id=group_id_of(report["results"].values()), report=report)


@router.get("", operation_id="list_comparisons", response_model=ReportPage)
async def list_comparisons(
    outputs: OutputsDep,
    principal: UserDep,
    limit: int = Query(default=50, ge=1, le=500),
    cursor: str | None = Query(
        default=None, pattern=CURSOR_PATTERN, description="The `next_cursor` of the page before."
    ),
) -> ReportPage:
    """Stored comparisons, newest first."""
    return await report_page(
        outputs, "comparison", principal, model=None, limit=limit, cursor=cursor
    )


@router.get(
    "/{comparison_id}",
    operation_id="get_comparison",
    response_model=ReportDetail,
    responses=NOT_FOUND,
)
async def get_comparison(
    comparison_id: str, outputs: OutputsDep, principal: UserDep
) -> ReportDetail:
    """One comparison with each model's run."""
    return await report_detail(outputs, "comparison", comparison_id, principal)
