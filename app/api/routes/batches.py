"""Batches: many prompts on one model with a concurrency limit; large ones as jobs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, status
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from app.access import Principal
from app.api.auth import UserDep
from app.api.bodies import batch_body
from app.api.deps import RunnerDep, ServicesDep
from app.api.errors import RUN_ERRORS, ApiError, Problem
from app.api.jobs import Job
from app.api.openapi import sse_response
from app.api.reports import add_report_routes
from app.api.schemas.common import ResultOut, execution_options
from app.api.schemas.runs import BatchJobOut, BatchOut, BatchProgress, BatchRequest
from app.api.streaming import job_events
from app.ollama import ModelExecutionResult
from app.ollama.metadata import group_id_of

router = APIRouter(prefix="/gateway/batches", tags=["batches"])

JOB_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No batch job with that id."}
}


def job_out(job: Job) -> BatchJobOut:
    done = [e for e in job.events if "index" in e]
    outcome = job.outcome or {}
    return BatchJobOut(
        id=job.id,
        model=job.subject,
        status=job.status,
        total=int(outcome.get("total", 0)),
        completed=len(done),
        succeeded=sum(bool(e["success"]) for e in done),
        failed=sum(not e["success"] for e in done),
        batch_id=outcome.get("batch_id"),
        error=job.error,
        created_at=job.created_at,
        finished_at=job.finished_at,
    )


@router.post(
    "",
    operation_id="run_batch",
    response_model=BatchOut,
    responses={
        **RUN_ERRORS,
        202: {"model": BatchJobOut, "description": "Started as a background job."},
    },
)
async def run_batch(
    body: Annotated[BatchRequest, Depends(batch_body)],
    runner: RunnerDep,
    services: ServicesDep,
    principal: UserDep,
) -> BatchOut | JSONResponse:
    """Run every prompt (at most `max_concurrent` at once); results in prompt order.

    One prompt's failure is its own failed result and does not stop the others. Large
    batches (or `background: true`) start a job: 202, then follow
    `/gateway/batches/jobs/{id}/events`.
    """
    options = execution_options(body.options)
    background = body.background
    if background is None:
        background = len(body.prompts) > services.settings.batch_sync_max
    if background:

        async def work(job: Job) -> bool:
            job.outcome = {"total": len(body.prompts)}

            def on_result(index: int, result: ModelExecutionResult) -> None:
                progress = BatchProgress(
                    index=index,
                    success=result.success,
                    error_message=result.error_message,
                    tokens_used=result.tokens_used,
                )
                job.emit(progress.model_dump())

            results = await runner.async_run_batch(
                body.model,
                body.prompts,
                options,
                max_concurrent=body.max_concurrent,
                batch_name=body.name,
                on_result=on_result,
            )
            job.outcome["batch_id"] = group_id_of(results)
            return True

        job = services.jobs.start("batch", body.model, work, principal)
        return JSONResponse(
            job_out(job).model_dump(mode="json"),
            status_code=status.HTTP_202_ACCEPTED,
            headers={"Location": f"/gateway/batches/jobs/{job.id}"},
        )
    results = await runner.async_run_batch(
        body.model,
        body.prompts,
        options,
        max_concurrent=body.max_concurrent,
        batch_name=body.name,
    )
    return BatchOut(
        id=group_id_of(results),
        model=body.model,
        results=[ResultOut.from_result(r, (r.metadata or {}).get("result_id")) for r in results],
        succeeded=sum(r.success for r in results),
        failed=sum(not r.success for r in results),
    )


def _job(services: ServicesDep, job_id: str, principal: Principal) -> Job:
    job = services.jobs.get(job_id, "batch", principal)
    if job is None:
        raise ApiError(404, "Batch job not found", f"no batch job with id '{job_id}'")
    return job


@router.get(
    "/jobs/{job_id}",
    operation_id="get_batch_job",
    response_model=BatchJobOut,
    responses=JOB_NOT_FOUND,
)
async def get_batch_job(job_id: str, services: ServicesDep, principal: UserDep) -> BatchJobOut:
    """A background batch's progress; `batch_id` names the stored batch once done."""
    return job_out(_job(services, job_id, principal))


@router.get(
    "/jobs/{job_id}/events",
    operation_id="follow_batch_job",
    response_class=EventSourceResponse,
    responses={
        200: sse_response(
            "Server-sent events: a `progress` event (BatchProgress) per finished prompt, "
            "then one `done` event (BatchJobOut).",
            {"progress": BatchProgress, "done": BatchJobOut},
        ),
        **JOB_NOT_FOUND,
    },
)
async def follow_batch_job(
    job_id: str, services: ServicesDep, principal: UserDep
) -> EventSourceResponse:
    """Progress of a background batch, from its start; ends with a `done` event."""
    job = _job(services, job_id, principal)
    return job_events(services.jobs, job, lambda: job_out(job))


add_report_routes(
    router,
    "batch",
    list_operation="list_batches",
    list_doc="Stored batches, newest first.",
    get_operation="get_batch",
    get_doc="One batch with its runs, in prompt order.",
    model_filter=True,
)
