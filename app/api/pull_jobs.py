"""Pulls as jobs: a pull runs in the background and outlives the client that started it.

Each job keeps the progress objects Ollama streamed, so a client that subscribes late (or
reconnects) to `/gateway/pulls/{id}/events` first gets what it missed, then live events.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from app.ollama import OllamaManager

PullStatus = Literal["running", "succeeded", "failed"]

MAX_EVENTS_KEPT = 2000


@dataclass
class PullJob:
    id: str
    model: str
    status: PullStatus = "running"
    error: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def touch(self) -> None:
        """Wake every follower: they hold the old event, which is now set."""
        self._wake.set()
        self._wake = asyncio.Event()

    async def wait_for_change(self) -> None:
        await self._wake.wait()

    @property
    def latest(self) -> dict[str, Any] | None:
        return self.events[-1] if self.events else None

    @property
    def finished(self) -> bool:
        return self.status != "running"


class PullJobs:
    """The pull jobs of one app instance; tasks are cancelled when the app shuts down."""

    def __init__(self, manager: OllamaManager) -> None:
        self._manager = manager
        self._jobs: dict[str, PullJob] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, model: str) -> PullJob:
        job = PullJob(id=uuid.uuid4().hex, model=model)
        self._jobs[job.id] = job
        task = asyncio.create_task(self._run(job), name=f"pull-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    def get(self, job_id: str) -> PullJob | None:
        return self._jobs.get(job_id)

    async def _run(self, job: PullJob) -> None:
        def on_progress(line: dict[str, Any]) -> None:
            if len(job.events) < MAX_EVENTS_KEPT:
                job.events.append(dict(line))
            else:
                job.events[-1] = dict(line)
            if "error" in line:
                job.error = str(line["error"])
            job.touch()

        try:
            ok = await self._manager.adownload_model(job.model, on_progress)
        except Exception as exc:  # a bad name raises ValueError before anything is sent
            ok = False
            job.error = str(exc)
        job.status = "succeeded" if ok else "failed"
        if not ok and job.error is None:
            job.error = f"pull of {job.model} did not complete"
        job.finished_at = datetime.now(UTC)
        job.touch()

    async def follow(self, job: PullJob) -> AsyncIterator[dict[str, Any]]:
        """Every progress object of `job`, from the first, until it finishes."""
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
