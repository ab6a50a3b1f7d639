"""Batches: many prompts on one model with a concurrency limit; large ones as jobs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, status
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from app.api.common.auth import UserDep
from app.api.common.deps import RunnerDep, ServicesDep
from app.api.gateway.bodies import batch_body
from app.api.gateway.openapi import sse_response
from app.api.gateway.problems import RUN_ERRORS, Problem
from app.api.gateway.reports import add_report_routes
from app.api.gateway.routes.jobs import owner_name, readable_job, runs_in_background
from app.api.gateway.schemas.common import ResultOut, execution_options
from app.api.gateway.schemas.runs import BatchJobOut, BatchOut, BatchProgress, BatchRequest
from app.api.gateway.streaming import LastEventId, job_event_stream, last_event_id
from app.ollama.metadata import group_id_of

router = APIRouter(prefix="/gateway/batches", tags=["batches"])

JOB_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No batch job with that id."}
}


def batch_job_out(job: dict[str, Any]) -> BatchJobOut:
    """A batch job as `/gateway/batches/jobs/{id}` has always shown it."""
    return BatchJobOut.model_validate({**job, "model": job["subject"]})


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
    if runs_in_background(body.background, len(body.prompts), services.settings):
        job = await services.jobs.asubmit_batch(
            body.model,
            body.prompts,
            options,
            max_concurrent=body.max_concurrent,
            name=body.name,
            owner=owner_name(principal),
        )
        return JSONResponse(
            batch_job_out(job).model_dump(mode="json"),
            status_code=status.HTTP_202_ACCEPTED,
            headers={"Location": f"/gateway/batches/jobs/{job['id']}"},
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


@router.get(
    "/jobs/{job_id}",
    operation_id="get_batch_job",
    response_model=BatchJobOut,
    responses=JOB_NOT_FOUND,
)
async def get_batch_job(job_id: str, services: ServicesDep, principal: UserDep) -> BatchJobOut:
    """A background batch's progress; `batch_id` names the stored batch once done."""
    return batch_job_out(await readable_job(services.jobs, job_id, principal, "batch"))


@router.get(
    "/jobs/{job_id}/events",
    operation_id="follow_batch_job",
    response_class=EventSourceResponse,
    responses={
        200: sse_response(
            "BatchJobEvent",
            "Server-sent events: a `progress` event (BatchProgress) per finished prompt, "
            "then one `done` event (BatchJobOut).",
            {"progress": BatchProgress, "done": BatchJobOut},
        ),
        **JOB_NOT_FOUND,
    },
)
async def follow_batch_job(
    job_id: str,
    services: ServicesDep,
    principal: UserDep,
    last_event: LastEventId = None,
) -> EventSourceResponse:
    """Progress of a background batch, from its start; ends with a `done` event."""
    await readable_job(services.jobs, job_id, principal, "batch")
    return job_event_stream(services.jobs, job_id, last_event_id(last_event), batch_job_out)


add_report_routes(
    router,
    "batch",
    list_operation="list_batches",
    list_doc="Stored batches, newest first.",
    get_operation="get_batch",
    get_doc="One batch with its runs, in prompt order.",
    model_filter=True,
)
