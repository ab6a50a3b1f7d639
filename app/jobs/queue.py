"""Who runs which job when: the job engine (see docs/decisions/0001-job-engine.md).

- **PostgreSQL: procrastinate.** Jobs are deferred into procrastinate's queue (its own
  schema, `procrastinate`, in the gateway's database); any worker (`serve`'s embedded one,
  or `ollama-gateway worker`) takes them, with LISTEN/NOTIFY. Workers send heartbeats;
  each worker also looks for jobs whose worker stopped sending them and puts them back in
  the queue, so a job whose worker died is taken over within `stalled_seconds` and a few
  seconds more.
- **SQLite: one host.** SQLite is one machine's file, so there is no fleet to share work
  with: the embedded worker runs jobs in the process, picks up jobs queued by another
  process on the same file, and at start resumes every job whose worker process is gone.

Either way the truth about a job is its record (`app.jobs.store`), and running it
twice is harmless (`JobRunner` redoes only what has no stored run).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Protocol

from app.jobs.store import JobStore
from app.storage.db import is_sqlite, normalize_url

__all__ = ["JobQueue", "LocalQueue", "ProcrastinateQueue", "make_queue"]

logger = logging.getLogger(__name__)

RunJob = Callable[[str], Awaitable[None]]
ENGINE_SCHEMA = "procrastinate"
TASK_NAME = "ollama_gateway.run_job"
QUEUE = "gateway-jobs"


class JobQueue(Protocol):
    async def open(self) -> None:
        """Connect (before `enqueue` or `work`)."""

    async def enqueue(self, job_id: str) -> None:
        """Hand a recorded job to the workers."""

    async def work(self) -> None:
        """Run jobs until cancelled."""

    async def aclose(self) -> None:
        """Disconnect."""


class ProcrastinateQueue:
    """Jobs through procrastinate, on the gateway's PostgreSQL database."""

    def __init__(
        self,
        database_url: str,
        run_job: RunJob,
        *,
        concurrency: int,
        stalled_seconds: float,
        worker: str,
    ) -> None:
        import procrastinate

        dsn = normalize_url(database_url).replace("postgresql+asyncpg://", "postgresql://", 1)
        connector = procrastinate.PsycopgConnector(
            conninfo=dsn,
            kwargs={"options": f"-c search_path={ENGINE_SCHEMA}"},
            min_size=1,
            max_size=4,
        )
        self.app = procrastinate.App(connector=connector)
        self.concurrency = concurrency
        self.stalled_seconds = stalled_seconds
        self.worker = worker

        async def run(job_id: str) -> None:
            await run_job(job_id)

        self.task = self.app.task(name=TASK_NAME, queue=QUEUE)(run)

    async def open(self) -> None:
        await self.app.open_async()

    async def enqueue(self, job_id: str) -> None:
        await self.task.defer_async(job_id=job_id)

    async def work(self) -> None:
        rescue = asyncio.create_task(self._rescue_stalled(), name="job-rescue")
        try:
            await self.app.run_worker_async(
                queues=[QUEUE],
                name=self.worker,
                concurrency=self.concurrency,
                wait=True,
                install_signal_handlers=False,
                update_heartbeat_interval=max(self.stalled_seconds / 5, 0.5),
                stalled_worker_timeout=self.stalled_seconds,
                delete_jobs="successful",
            )
        finally:
            rescue.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rescue

    async def _rescue_stalled(self) -> None:
        """Put back in the queue the jobs whose worker stopped sending heartbeats."""
        while True:
            await asyncio.sleep(self.stalled_seconds / 2)
            try:
                stalled = await self.app.job_manager.get_stalled_jobs(
                    seconds_since_heartbeat=self.stalled_seconds
                )
                for job in stalled:
                    logger.warning("job %s: its worker stopped; running it again", job.id)
                    await self.app.job_manager.retry_job(job)
            except Exception:
                logger.exception("looking for stalled jobs failed")

    async def aclose(self) -> None:
        await self.app.close_async()


class LocalQueue:
    """Jobs on one host (SQLite): in this process, resumed at start if their process died."""

    def __init__(self, store: JobStore, run_job: RunJob, *, concurrency: int) -> None:
        self.store = store
        self.run_job = run_job
        self.slots = asyncio.Semaphore(concurrency)
        self.wake = asyncio.Event()
        self.running: dict[str, asyncio.Task[None]] = {}

    async def open(self) -> None:
        return None

    async def enqueue(self, job_id: str) -> None:
        self.wake.set()

    async def work(self) -> None:
        try:
            while True:
                for job in await self.store.aunfinished():
                    if job["id"] in self.running or not _orphaned(job):
                        continue
                    await self.slots.acquire()
                    task = asyncio.create_task(self._run(job["id"]), name=f"job-{job['id']}")
                    self.running[job["id"]] = task
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self.wake.wait()
                self.wake.clear()
        finally:
            for task in list(self.running.values()):
                task.cancel()
            for task in list(self.running.values()):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _run(self, job_id: str) -> None:
        try:
            await self.run_job(job_id)
        except Exception:
            logger.exception("job %s failed", job_id)
        finally:
            self.running.pop(job_id, None)
            self.slots.release()

    async def aclose(self) -> None:
        return None


def _orphaned(job: dict[str, object]) -> bool:
    """A queued job, or a running one whose worker process on this host is gone."""
    if job["status"] == "queued":
        return True
    host, _, pid = str(job.get("worker") or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def make_queue(
    database_url: str,
    store: JobStore,
    run_job: RunJob,
    *,
    concurrency: int,
    stalled_seconds: float,
    worker: str,
) -> JobQueue:
    """procrastinate on PostgreSQL, the one-host queue on SQLite."""
    if is_sqlite(database_url):
        return LocalQueue(store, run_job, concurrency=concurrency)
    return ProcrastinateQueue(
        database_url,
        run_job,
        concurrency=concurrency,
        stalled_seconds=stalled_seconds,
        worker=worker,
    )
