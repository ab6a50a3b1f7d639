"""Comparisons: one prompt on several models, side by side."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, status
from fastapi.responses import JSONResponse

from app.api.common.auth import UserDep
from app.api.common.deps import RunnerDep, ServicesDep
from app.api.common.direct_stream import SseStream
from app.api.gateway.bodies import comparison_body, comparison_stream_body
from app.api.gateway.problems import RUN_ERRORS
from app.api.gateway.reports import add_report_routes
from app.api.gateway.routes.jobs import JOB_STARTED, job_started, owner_name, runs_in_background
from app.api.gateway.schemas.common import execution_options
from app.api.gateway.schemas.runs import ComparisonRequest, ComparisonStreamRequest, ReportOut
from app.api.gateway.streaming import COMPARISON_SSE_RESPONSES, comparison_stream_response
from app.ollama.metadata import group_id_of

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


@router.post(
    "/stream",
    operation_id="stream_comparison",
    response_class=SseStream,
    responses={**RUN_ERRORS, **COMPARISON_SSE_RESPONSES},
)
async def stream_comparison(
    body: Annotated[ComparisonStreamRequest, Depends(comparison_stream_body)],
    runner: RunnerDep,
    services: ServicesDep,
) -> SseStream:
    """Run the prompt on every model at once and stream their answers side by side as
    server-sent events: `chunk` events naming their model, a `run` event as each model's
    run ends, then the stored report (`comparison`, as `POST /gateway/comparisons` returns
    it). Its runs are interactive: they do not wait behind other requests as a
    comparison's runs from `POST /gateway/comparisons` do. A client that leaves cancels
    the runs still going; the comparison is stored with them as cancelled."""
    options = execution_options(body.options)
    events = runner.async_comparison_stream(body.models, body.prompt, options)
    return comparison_stream_response(events, services.shutdown)


add_report_routes(
    router,
    "comparison",
    list_operation="list_comparisons",
    list_doc="Stored comparisons, newest first.",
    get_operation="get_comparison",
    get_doc="One comparison with each model's run.",
    model_filter=False,
)
