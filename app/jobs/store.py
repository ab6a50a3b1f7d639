"""Job records in the database: what every replica and worker reads and writes.

A job (a batch, benchmark, comparison or pull) lives in the `jobs` table, its events in
`job_events` (numbered: the SSE ids a client resumes from) and its runs in `executions`
under the job and their index, unique together, stored as each finishes. No process keeps
a job only in memory, so any replica answers for any job and a job survives the process
that ran it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy.exc import IntegrityError

from app.ollama.stored_rows import execution_row, results_of
from app.ollama.types import ModelExecutionResult
from app.storage.database_user import DatabaseUser
from app.storage.escaping import escape_row
from app.storage.job_repository import FINISHED, JobFilter, JobRepository
from app.storage.repositories import Executions, Reports, new_id
from app.storage.tables import Job, JobEvent, ReportRow

__all__ = ["JOB_KINDS", "JOB_STATUSES", "JobKind", "JobStatus", "JobStore"]

logger = logging.getLogger(__name__)

JobKind = Literal["batch", "benchmark", "comparison", "pull"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_KINDS: tuple[JobKind, ...] = ("batch", "benchmark", "comparison", "pull")
JOB_STATUSES: tuple[JobStatus, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
REPORT_LINKS = {"batch": "batch_id", "benchmark": "benchmark_id", "comparison": "comparison_id"}


def job_dict(row: Job) -> dict[str, Any]:
    """A job as the API shows it; the report it produced under its kind's id."""
    out: dict[str, Any] = {
        "id": row.id,
        "kind": row.kind,
        "status": row.status,
        "subject": row.subject,
        "total": row.total,
        "completed": row.completed,
        "succeeded": row.succeeded,
        "failed": row.failed,
        "attempts": row.attempts,
        "worker": row.worker if row.status == "running" else None,
        "owner": row.owner,
        "error": row.error,
        "cancel_requested": row.cancel_requested,
        "created_at": row.created_at,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "request": row.request,
    }
    for kind, link in REPORT_LINKS.items():
        out[link] = row.report_id if row.kind == kind else None
    return out


def event_dict(row: JobEvent) -> dict[str, Any]:
    return {"id": row.id, "event": row.event, "data": row.data}


class JobStore(DatabaseUser):
    """The jobs of one database (records, events, runs, reports)."""

    def __init__(self, database_url: str) -> None:
        super().__init__(database_url, name="job-store")

    async def acreate(
        self,
        kind: JobKind,
        subject: str,
        request: dict[str, Any],
        *,
        total: int,
        owner: str | None,
    ) -> dict[str, Any]:
        await self._prepare()
        row = Job(
            id=new_id(),
            kind=kind,
            status="queued",
            subject=subject[:512],
            request=request,
            total=total,
            owner=owner,
            created_at=datetime.now(UTC),
        )
        async with self.db.session() as session:
            await JobRepository(session).add(row)
            return job_dict(row)

    async def aget(self, job_id: str) -> dict[str, Any] | None:
        await self._prepare()
        async with self.db.session() as session:
            row = await JobRepository(session).get(job_id)
            return job_dict(row) if row is not None else None

    async def alist(
        self,
        *,
        kind: str | None = None,
        status: str | None = None,
        owner: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of jobs, newest first (`owner`: that key's only), and the next cursor."""
        await self._prepare()
        where = JobFilter(kind=kind, status=status, owner=owner)
        async with self.db.session() as session:
            rows, next_cursor = await JobRepository(session).page(where, limit, cursor)
            return [job_dict(r) for r in rows], next_cursor

    async def aunfinished(self) -> list[dict[str, Any]]:
        await self._prepare()
        async with self.db.session() as session:
            return [job_dict(r) for r in await JobRepository(session).unfinished()]

    async def aclaim(self, job_id: str, worker: str) -> dict[str, Any] | None:
        """Start (or restart) the job on `worker`; None when it has finished."""
        await self._prepare()
        async with self.db.session() as session:
            row = await JobRepository(session).claim(job_id, worker)
            return job_dict(row) if row is not None else None

    async def aevent(self, job_id: str, event: str, data: dict[str, Any]) -> int:
        async with self.db.session() as session:
            return await JobRepository(session).add_event(job_id, event, data)

    async def aevents_after(self, job_id: str, after: int = 0) -> list[dict[str, Any]]:
        """The job's events numbered above `after`, in order."""
        await self._prepare()
        async with self.db.session() as session:
            return [event_dict(e) for e in await JobRepository(session).events_after(job_id, after)]

    async def alatest_event(self, job_id: str, event: str) -> dict[str, Any] | None:
        await self._prepare()
        async with self.db.session() as session:
            row = await JobRepository(session).latest_event(job_id, event)
            return event_dict(row) if row is not None else None

    async def arequest_cancel(self, job_id: str) -> dict[str, Any] | None:
        """Ask the job to stop; a queued job ends cancelled at once."""
        await self._prepare()
        async with self.db.session() as session:
            repo = JobRepository(session)
            row = await repo.get(job_id)
            if row is None:
                return None
            if row.status not in FINISHED:
                row.cancel_requested = True
                if row.status == "queued":
                    await self._finish_row(repo, row, "cancelled", None)
            await session.flush()
            return job_dict(row)

    async def acancel_requested(self, job_id: str) -> bool:
        async with self.db.session() as session:
            row = await JobRepository(session).get(job_id)
            return row is None or row.cancel_requested or row.status in FINISHED

    async def astored_indexes(self, job_id: str) -> set[int]:
        async with self.db.session() as session:
            return await JobRepository(session).stored_indexes(job_id)

    async def astore_run(
        self,
        job_id: str,
        index: int,
        result: ModelExecutionResult,
        kind: str,
        progress: Callable[[ModelExecutionResult], dict[str, Any]],
    ) -> str | None:
        """Store one run under the job and its index, with its `progress` event and the
        job's counts, in one transaction; None when that index is stored already (an
        earlier attempt did it)."""
        row = execution_row(result, kind=kind)
        row.job_id, row.job_index = job_id, index
        if result.metadata is None:
            result.metadata = {}
        result.metadata["result_id"] = row.id

        async def write() -> None:
            async with self.db.session() as session:
                await Executions(session).add(row)
                repo = JobRepository(session)
                await repo.add_event(job_id, "progress", progress(result))
                await repo.count_one(job_id, row.success)

        try:
            await self._shielded(write())
        except IntegrityError:
            return None
        except Exception:
            if not escape_row(row):
                raise
            await self._shielded(write())
        return row.id

    async def aruns(self, job_id: str) -> list[ModelExecutionResult]:
        """The job's stored runs, in index order, as results."""
        async with self.db.session() as session:
            rows = await JobRepository(session).runs(job_id)
            items = [
                {
                    "model_name": r.model,
                    "prompt": r.prompt,
                    "response": r.response,
                    "execution_time": r.execution_time,
                    "tokens_used": r.tokens_used,
                    "success": r.success,
                    "error_message": r.error,
                    "metadata": {**(r.meta or {}), "result_id": r.id},
                }
                for r in rows
            ]
        return results_of(items)

    async def asave_report(self, job_id: str, report: ReportRow) -> str:
        """Store the report a job produced and link the job's runs to it, in one
        transaction with the job's `report_id` (so a restarted job never stores two)."""
        async with self.db.session() as session:
            repo = JobRepository(session)
            job = await repo.get(job_id)
            if job is None:
                raise LookupError(f"no job {job_id}")
            if job.report_id is not None:
                return job.report_id
            report.principal = job.owner
            await Reports(session).add(report)
            await repo.link_runs(job_id, REPORT_LINKS[job.kind], report.id)
            job.report_id = report.id
            return report.id

    async def afinish(
        self, job_id: str, status: JobStatus, error: str | None = None
    ) -> dict[str, Any] | None:
        """End the job with `status` and write its `done` event (with the final record)."""
        async with self.db.session() as session:
            repo = JobRepository(session)
            row = await repo.get(job_id)
            if row is not None and row.status not in FINISHED:
                await self._finish_row(repo, row, status, error)
            return job_dict(row) if row is not None else None

    @staticmethod
    async def _finish_row(
        repo: JobRepository, row: Job, status: JobStatus, error: str | None
    ) -> None:
        if row.cancel_requested and status != "failed":
            status = "cancelled"
        row.status = status
        row.error = error
        row.finished_at = datetime.now(UTC)
        completed, succeeded = await repo.count_runs(row.id)
        row.completed, row.succeeded, row.failed = completed, succeeded, completed - succeeded
        await repo.session.flush()
        await repo.add_event(row.id, "done", _jsonable(job_dict(row)))


def _jsonable(job: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in job.items()}
