"""Pulls: start a model download as a job, follow its progress over SSE."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, status
from pydantic import BaseModel, Field
from sse_starlette import EventSourceResponse

from app.access import Principal
from app.api.common.auth import AdminDep
from app.api.common.deps import ServicesDep, require_backend
from app.api.common.errors import ApiError
from app.api.gateway.openapi import sse_response
from app.api.gateway.problems import Problem
from app.api.gateway.routes.jobs import owner_name, readable_job
from app.api.gateway.schemas.common import MODEL_NAME, Schema
from app.api.gateway.schemas.jobs import JobStatus, PullProgress
from app.api.gateway.streaming import LastEventId, job_event_stream, last_event_id
from app.jobs.service import Jobs
from app.ollama import normalize_model_name

router = APIRouter(prefix="/gateway/pulls", tags=["pulls"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No such pull job."}
}


class PullRequest(Schema):
    model: str = MODEL_NAME
    backend: str | None = Field(
        default=None,
        max_length=2048,
        description="A backend's name or URL, or `all`; default the least loaded one.",
        examples=["all"],
    )


class PullOut(BaseModel):
    id: str
    model: str
    status: JobStatus = Field(description="queued, running, succeeded, failed or cancelled.")
    error: str | None = None
    progress: dict[str, Any] | None = Field(
        default=None, description="The latest progress object Ollama sent."
    )
    created_at: datetime
    finished_at: datetime | None = None

    @classmethod
    def from_job(cls, job: dict[str, Any], progress: dict[str, Any] | None = None) -> PullOut:
        return cls.model_validate({**job, "model": job["subject"], "progress": progress})


async def _pull(jobs: Jobs, pull_id: str, principal: Principal) -> dict[str, Any]:
    try:
        return await readable_job(jobs, pull_id, principal, "pull")
    except ApiError as exc:
        raise ApiError(404, "Pull not found", f"no pull job with id '{pull_id}'") from exc


@router.post(
    "",
    operation_id="start_pull",
    response_model=PullOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses={404: {"model": Problem, "description": "No backend of that name."}},
)
async def start_pull(body: PullRequest, services: ServicesDep, principal: AdminDep) -> PullOut:
    """Start pulling a model in the background; follow it at `/gateway/pulls/{id}/events`."""
    model = normalize_model_name(body.model)
    require_backend(services.fleet, body.backend)  # an unknown backend: 404 now, not a failed job

    job = await services.jobs.asubmit_pull(model, body.backend, owner=owner_name(principal))
    return PullOut.from_job(job)


@router.get("/{pull_id}", operation_id="get_pull", response_model=PullOut, responses=NOT_FOUND)
async def get_pull(pull_id: str, services: ServicesDep, principal: AdminDep) -> PullOut:
    """A pull job's state and latest progress."""
    job = await _pull(services.jobs, pull_id, principal)
    return PullOut.from_job(job, await services.jobs.alatest_progress(pull_id))


@router.get(
    "/{pull_id}/events",
    operation_id="follow_pull",
    response_class=EventSourceResponse,
    responses={
        200: sse_response(
            "PullEvent",
            "Server-sent events: `progress` events (Ollama's progress objects), then one "
            "`done` event (the job, as `get_pull` returns it).",
            {"progress": PullProgress, "done": PullOut},
        ),
        **NOT_FOUND,
    },
)
async def follow_pull(
    pull_id: str,
    services: ServicesDep,
    principal: AdminDep,
    last_event: LastEventId = None,
) -> EventSourceResponse:
    """Progress of a pull as server-sent events, from its start; ends with a `done` event."""
    await _pull(services.jobs, pull_id, principal)
    last = await services.jobs.alatest_progress(pull_id)

    def done(job: dict[str, Any]) -> PullOut:
        return PullOut.from_job(job, last)

    # A failure's {"error": ...} line is not progress: the `done` event carries the error.
    return job_event_stream(
        services.jobs,
        pull_id,
        last_event_id(last_event),
        done,
        keep=lambda line: "error" not in line,
    )
