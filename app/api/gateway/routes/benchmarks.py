"""Benchmarks: run a model over test prompts and keep the report."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, status
from fastapi.responses import JSONResponse

from app.api.common.auth import UserDep
from app.api.common.deps import RunnerDep, ServicesDep
from app.api.gateway.bodies import benchmark_body
from app.api.gateway.problems import RUN_ERRORS
from app.api.gateway.reports import add_report_routes
from app.api.gateway.routes.jobs import JOB_STARTED, job_started, owner_name, runs_in_background
from app.api.gateway.schemas.common import execution_options
from app.api.gateway.schemas.runs import BenchmarkRequest, ReportOut
from app.ollama.metadata import group_id_of

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


add_report_routes(
    router,
    "benchmark",
    list_operation="list_benchmarks",
    list_doc="Stored benchmark reports, newest first.",
    get_operation="get_benchmark",
    get_doc="One benchmark report with its runs.",
    model_filter=True,
)
