"""Background jobs (pulls, large batches): they run on the app's loop and outlive the
client that started them. Each keeps the events it produced, so a client that subscribes
late (or reconnects) gets what it missed first, then live events."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from app.access import Principal
from app.api.ownership import may_read

JobStatus = Literal["running", "succeeded", "failed"]

MAX_EVENTS_KEPT = 2000


@dataclass
class Job:
    id: str
    kind: str
    subject: str
    owner: str | None = None
    """The API key (by name) that started it; only it and admins may read the job."""
    status: JobStatus = "running"
    error: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    outcome: dict[str, Any] | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def latest(self) -> dict[str, Any] | None:
        return self.events[-1] if self.events else None

    @property
    def finished(self) -> bool:
        return self.status != "running"

    def emit(self, event: dict[str, Any]) -> None:
        """Record an event (the oldest are kept, the last one always) and wake followers."""
        if len(self.events) < MAX_EVENTS_KEPT:
            self.events.append(dict(event))
        else:
            self.events[-1] = dict(event)
        self._touch()

    def _touch(self) -> None:
        # Followers hold the old event, which is now set; new waits take the new one.
        self._wake.set()
        self._wake = asyncio.Event()

    def finish(self, ok: bool, error: str | None = None) -> None:
        self.status = "succeeded" if ok else "failed"
        self.error = None if ok else (error or self.error or f"the {self.kind} failed")
        self.finished_at = datetime.now(UTC)
        self._touch()

    async def wait_for_change(self) -> None:
        await self._wake.wait()


Work = Callable[[Job], Awaitable[bool]]


class Jobs:
    """The jobs of one app instance; running ones are cancelled when the app shuts down."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, kind: str, subject: str, work: Work, owner: Principal) -> Job:
        job = Job(id=uuid.uuid4().hex, kind=kind, subject=subject, owner=owner.name)
        self._jobs[job.id] = job
        task = asyncio.create_task(self._run(job, work), name=f"{kind}-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    def get(self, job_id: str, kind: str, reader: Principal) -> Job | None:
        """The job of this kind, if `reader` may read it (its owner, or an admin)."""
        job = self._jobs.get(job_id)
        if job is None or job.kind != kind or not may_read(reader, job.owner):
            return None
        return job

    async def _run(self, job: Job, work: Work) -> None:
        try:
            ok = await work(job)
        except asyncio.CancelledError:
            job.finish(False, "the gateway shut down before the job finished")
            raise
        except Exception as exc:  # a bad argument raises before anything is sent
            job.finish(False, str(exc))
            return
        job.finish(ok)

    async def follow(self, job: Job) -> AsyncIterator[dict[str, Any]]:
        """Every event of `job`, from the first, until it finishes."""
        sent = 0
        while True:
            if sent >= len(job.events) and not job.finished:
                await job.wait_for_change()
            while sent < len(job.events):
                yield job.events[sent]
                sent += 1
            if job.finished and sent >= len(job.events):
                return

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
