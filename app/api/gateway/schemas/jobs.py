"""Bodies of the jobs API (`/gateway/jobs`): one shape for every kind of long work."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobKind = Literal["batch", "benchmark", "comparison", "pull"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobOut(BaseModel):
    """A job: a batch, benchmark, comparison or pull run by any worker of any replica."""

    id: str
    kind: JobKind
    status: JobStatus
    subject: str = Field(description="The model (a comparison: the models, comma-separated).")
    total: int = Field(description="Runs it has (a pull: 1).")
    completed: int = Field(description="Runs finished and stored.")
    succeeded: int
    failed: int
    attempts: int = Field(description="Times it was started (more than 1: taken over).")
    worker: str | None = Field(
        default=None, description="The process running it (`host:pid`), while it runs."
    )
    owner: str | None = Field(default=None, description="The API key that started it.")
    error: str | None = None
    cancel_requested: bool = False
    batch_id: str | None = Field(default=None, description="The stored batch it produced.")
    benchmark_id: str | None = Field(default=None, description="The stored benchmark report.")
    comparison_id: str | None = Field(default=None, description="The stored comparison.")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(default=None, description="Null on the last page.")


class JobProgress(BaseModel):
    """`event: progress` of a batch, benchmark or comparison: one finished, stored run.
    (A pull's progress events are Ollama's own progress objects.)"""

    index: int
    success: bool
    error_message: str | None = None
    tokens_used: int | None = None
    model: str | None = None
    result_id: str | None = None


class PullProgress(BaseModel):
    """One progress object as Ollama streams it from `/api/pull`."""

    model_config = ConfigDict(extra="allow")

    status: str = Field(examples=["pulling manifest", "success"])
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


def job_out(job: dict[str, Any]) -> JobOut:
    return JobOut.model_validate(job)
