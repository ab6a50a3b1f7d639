"""Queries on jobs and their events. Like `repositories`, they take a session and never
commit: callers own the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.storage.repositories import decode_cursor, encode_cursor
from app.storage.tables import Execution, Job, JobEvent, utc_now

__all__ = ["JobFilter", "JobRepository"]

FINISHED = ("succeeded", "failed", "cancelled")


@dataclass
class JobFilter:
    kind: str | None = None
    status: str | None = None
    owner: str | None = None


class JobRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, row: Job) -> Job:
        self.session.add(row)
        await self.session.flush()
        return row

    async def get(self, job_id: str) -> Job | None:
        return await self.session.get(Job, job_id)

    async def page(
        self, where: JobFilter, limit: int, cursor: str | None
    ) -> tuple[Sequence[Job], str | None]:
        """Newest first; the next page's cursor, or None on the last page."""
        query = select(Job)
        for column, value in ((Job.kind, where.kind), (Job.status, where.status)):
            if value is not None:
                query = query.where(column == value)
        if where.owner is not None:
            query = query.where(Job.owner == where.owner)
        if cursor is not None:
            at, row_id = decode_cursor(cursor)
            query = query.where(
                or_(Job.created_at < at, and_(Job.created_at == at, Job.id < row_id))
            )
        query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
        rows = (await self.session.scalars(query)).all()
        if len(rows) > limit:
            last = rows[limit - 1]
            return rows[:limit], encode_cursor(last.created_at, last.id)
        return rows, None

    async def unfinished(self) -> Sequence[Job]:
        """Jobs queued or running, oldest first (to resume after a restart)."""
        query = select(Job).where(Job.status.in_(("queued", "running"))).order_by(Job.created_at)
        return (await self.session.scalars(query)).all()

    async def claim(self, job_id: str, worker: str) -> Job | None:
        """Mark the job running on `worker`, one attempt more; None when it is finished."""
        job = await self.session.get(Job, job_id, with_for_update=True)
        if job is None or job.status in FINISHED:
            return None
        job.status = "running"
        job.worker = worker
        job.attempts += 1
        job.started_at = job.started_at or utc_now()
        completed, succeeded = await self.count_runs(job_id)  # what earlier attempts stored
        job.completed, job.succeeded, job.failed = completed, succeeded, completed - succeeded
        await self.session.flush()
        return job

    async def count_one(self, job_id: str, succeeded: bool) -> None:
        """Count one more stored run into the job's progress."""
        await self.session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                completed=Job.completed + 1,
                succeeded=Job.succeeded + int(succeeded),
                failed=Job.failed + int(not succeeded),
            )
        )

    async def count_runs(self, job_id: str) -> tuple[int, int]:
        """How many runs of the job are stored, and how many of them succeeded."""
        query = select(func.count(), func.count().filter(Execution.success.is_(True))).where(
            Execution.job_id == job_id
        )
        total, ok = (await self.session.execute(query)).one()
        return int(total or 0), int(ok or 0)

    async def stored_indexes(self, job_id: str) -> set[int]:
        query = select(Execution.job_index).where(Execution.job_id == job_id)
        return {int(i) for i in (await self.session.scalars(query)).all() if i is not None}

    async def runs(self, job_id: str) -> Sequence[Execution]:
        """The job's stored runs in index order."""
        query = select(Execution).where(Execution.job_id == job_id).order_by(Execution.job_index)
        return (await self.session.scalars(query)).all()

    async def link_runs(self, job_id: str, column: str, report_id: str) -> None:
        """Link every stored run of the job to the report it produced."""
        await self.session.execute(
            update(Execution).where(Execution.job_id == job_id).values({column: report_id})
        )

    async def add_event(self, job_id: str, event: str, data: dict[str, Any]) -> int:
        row = JobEvent(job_id=job_id, event=event, data=data, created_at=utc_now())
        self.session.add(row)
        await self.session.flush()
        return row.id

    async def events_after(self, job_id: str, after: int, limit: int = 500) -> Sequence[JobEvent]:
        query = (
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.id > after)
            .order_by(JobEvent.id)
            .limit(limit)
        )
        return (await self.session.scalars(query)).all()

    async def latest_event(self, job_id: str, event: str) -> JobEvent | None:
        query = (
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.event == event)
            .order_by(JobEvent.id.desc())
            .limit(1)
        )
        return (await self.session.scalars(query)).first()
