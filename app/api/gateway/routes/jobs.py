"""The jobs API: every kind of long work (batches, benchmarks, comparisons, pulls) in one
place. Job records live in the database, so any replica answers for any job; a user key
sees only its own jobs, an admin every job."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, status
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from app.access import Principal
from app.api.common.auth import UserDep
from app.api.common.deps import ServicesDep
from app.api.common.errors import ApiError
from app.api.common.ownership import may_read, owner_of
from app.api.gateway.openapi import sse_response
from app.api.gateway.problems import Problem
from app.api.gateway.schemas.jobs import (
    JobKind,
    JobOut,
    JobPage,
    JobProgress,
    JobStatus,
    PullProgress,
    job_out,
)
from app.api.gateway.streaming import LastEventId, job_event_stream, last_event_id
from app.jobs.service import Jobs
from app.ollama.outputs import CURSOR_PATTERN
from app.settings import Settings

router = APIRouter(prefix="/gateway/jobs", tags=["jobs"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No job with that id (or not yours)."}
}


JOB_STARTED: dict[int | str, dict[str, Any]] = {
    202: {"model": JobOut, "description": "Started as a job: follow `/gateway/jobs/{id}/events`."}
}


def runs_in_background(asked: bool | None, runs: int, settings: Settings) -> bool:
    """Whether work of `runs` runs is a job: as asked, else when over `batch_sync_max`."""
    return asked if asked is not None else runs > settings.batch_sync_max


def owner_name(principal: Principal) -> str | None:
    """Who a job belongs to: the key's name (None when anonymous)."""
    return None if principal.anonymous else principal.name


def job_started(job: dict[str, Any]) -> JSONResponse:
    """202 with the job, and where to follow it."""
    return JSONResponse(
        job_out(job).model_dump(mode="json"),
        status_code=status.HTTP_202_ACCEPTED,
        headers={"Location": f"/gateway/jobs/{job['id']}"},
    )


async def readable_job(
    jobs: Jobs, job_id: str, principal: Principal, kind: str | None = None
) -> dict[str, Any]:
    """The job, if `principal` may read it (its owner, or an admin) and it is of `kind`;
    else a 404 (another key's job is not told apart from no job)."""
    job = await jobs.aget(job_id)
    if job is None or not may_read(principal, job["owner"]) or kind not in (None, job["kind"]):
        what = f"{kind} job" if kind else "job"
        raise ApiError(404, "Job not found", f"no {what} with id '{job_id}'")
    return job


@router.get("", operation_id="list_jobs", response_model=JobPage)
async def list_jobs(
    services: ServicesDep,
    principal: UserDep,
    kind: JobKind | None = Query(default=None, description="Only jobs of this kind."),
    status: JobStatus | None = Query(default=None, description="Only jobs in this state."),
    limit: int = Query(default=50, ge=1, le=500),
    cursor: str | None = Query(
        default=None, pattern=CURSOR_PATTERN, description="The `next_cursor` of the page before."
    ),
) -> JobPage:
    """Jobs, newest first (a user key: its own)."""
    items, next_cursor = await services.jobs.alist(
        kind=kind, status=status, owner=owner_of(principal), limit=limit, cursor=cursor
    )
    return JobPage(items=[job_out(i) for i in items], next_cursor=next_cursor)


@router.get("/{job_id}", operation_id="get_job", response_model=JobOut, responses=NOT_FOUND)
async def get_job(job_id: str, services: ServicesDep, principal: UserDep) -> JobOut:
    """A job's state and progress; `batch_id`, `benchmark_id` or `comparison_id` names what
    it produced once it has succeeded."""
    return job_out(await readable_job(services.jobs, job_id, principal))


@router.get(
    "/{job_id}/events",
    operation_id="follow_job",
    response_class=EventSourceResponse,
    responses={
        200: sse_response(
            "JobEvent",
            "Server-sent events, each with an `id:`: `progress` events (JobProgress; a "
            "pull's: Ollama's progress objects), then one `done` event (JobOut). Reconnect "
            "with `Last-Event-ID` (to any replica) for the events after it.",
            {"progress": (JobProgress, PullProgress), "done": JobOut},
        ),
        **NOT_FOUND,
    },
)
async def follow_job(
    job_id: str,
    services: ServicesDep,
    principal: UserDep,
    last_event: LastEventId = None,
) -> EventSourceResponse:
    """A job's events from its start (or after `Last-Event-ID`), to its `done` event."""
    await readable_job(services.jobs, job_id, principal)
    return job_event_stream(services.jobs, job_id, last_event_id(last_event), job_out)


@router.post(
    "/{job_id}/cancel", operation_id="cancel_job", response_model=JobOut, responses=NOT_FOUND
)
async def cancel_job(job_id: str, services: ServicesDep, principal: UserDep) -> JobOut:
    """Stop a job: no new run starts, runs in flight are cancelled, and it ends
    `cancelled` keeping what finished (a finished job is left as it is)."""
    await readable_job(services.jobs, job_id, principal)
    job = await services.jobs.acancel(job_id)
    if job is None:
        raise ApiError(404, "Job not found", f"no job with id '{job_id}'")
    return job_out(job)
