"""Benchmarks: run a model over test prompts and keep the report."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, status
from fastapi.responses import JSONResponse

from app.api.auth import UserDep
from app.api.bodies import benchmark_body
from app.api.deps import OutputsDep, RunnerDep, ServicesDep
from app.api.errors import RUN_ERRORS
from app.api.reports import NOT_FOUND, report_detail, report_page
from app.api.routes.jobs import JOB_STARTED, job_started, owner_name, runs_in_background
from app.api.schemas.common import execution_options
from app.api.schemas.runs import BenchmarkRequest, ReportOut
from app.api.schemas.stored import ReportDetail, ReportPage
from app.ollama.metadata import group_id_of
from app.ollama.outputs import CURSOR_PATTERN

router = APIRouter(prefix="/gateway/benchmarks", tags=["benchmarks"])


@router.post(
    "",
    operation_id="run_benchmark",
    response_model=ReportOut,
    status_code=status.HTTP_201_CREATED,
    responses={**RUN_ERRORS, **JOB_STARTED},
)
async def run_benchmark(
    body: Annotated[BenchmarkRequest, Depends(benchmark_body)],
    runner: RunnerDep,
    services: ServicesDep,
    principal: UserDep,
) -> ReportOut | JSONResponse:
    """Run each test prompt in turn; report latency (p50/p95), decode speed, time to first
    token, throughput and success rate. Failed prompts are counted, not raised. With
    `background: true` (or more prompts than GATEWAY_BATCH_SYNC_MAX): a job (202)."""
    options = execution_options(body.options)
    if runs_in_background(body.background, len(body.test_prompts), services.settings):
        job = await services.jobs.asubmit_benchmark(
            body.model, body.test_prompts, options, owner=owner_name(principal)
        )
        return job_started(job)
    report = await runner.abenchmark_model(body.model, body.test_prompts, options)
    return ReportOut(id=group_id_of(report["individual_results"]), report=report)


@router.get("", operation_id="list_benchmarks", response_model=ReportPage)
async def list_benchmarks(
    outputs: OutputsDep,
    principal: UserDep,
    model: str | None = Query(default=None, max_length=512),
    limit: int = Query(default=50, ge=1, le=500),
    cursor: str | None = Query(
        default=None, pattern=CURSOR_PATTERN, description="The `next_cursor` of the page before."
    ),
) -> ReportPage:
    """Stored benchmark reports, newest first."""
    return await report_page(
        outputs, "benchmark", principal, model=model, limit=limit, cursor=cursor
    )


@router.get(
    "/{benchmark_id}",
    operation_id="get_benchmark",
    response_model=ReportDetail,
    responses=NOT_FOUND,
)
async def get_benchmark(benchmark_id: str, outputs: OutputsDep, principal: UserDep) -> ReportDetail:
    """One benchmark report with its runs."""
    return await report_detail(outputs, "benchmark", benchmark_id, principal)
