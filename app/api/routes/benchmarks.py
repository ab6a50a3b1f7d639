"""Benchmarks: run a model over test prompts and keep the report."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, status

from app.api.bodies import benchmark_body
from app.api.deps import RunnerDep
from app.api.errors import RUN_ERRORS
from app.api.reports import add_report_routes
from app.api.schemas.common import execution_options
from app.api.schemas.runs import BenchmarkRequest, ReportOut
from app.ollama.metadata import group_id_of

router = APIRouter(prefix="/gateway/benchmarks", tags=["benchmarks"])


@router.post(
    "",
    operation_id="run_benchmark",
    response_model=ReportOut,
    status_code=status.HTTP_201_CREATED,
    responses=RUN_ERRORS,
)
async def run_benchmark(
    body: Annotated[BenchmarkRequest, Depends(benchmark_body)], runner: RunnerDep
) -> ReportOut:
    """Run each test prompt in turn; report latency (p50/p95), decode speed, time to first
    token, throughput and success rate. Failed prompts are counted, not raised."""
    options = execution_options(body.options)
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
