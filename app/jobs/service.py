"""Jobs: long work (batches, benchmarks, comparisons, pulls) that outlives requests and
processes. The one door the REST layer and the `worker` command use.

`submit` checks the request (an `InvalidRequest` now, not a failed job later), records the
job and hands it to the engine (`app.jobs.queue`); `work()` runs jobs in this process
until cancelled (`serve`'s embedded worker, or `ollama-gateway worker`). Reads go to the
records, so any replica answers for any job.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import asdict
from typing import Any

from app.jobs.queue import JobQueue, make_queue
from app.jobs.runner import TEAM_KEY, TRACE_KEY, JobAdmission, JobRunner
from app.jobs.store import JOB_KINDS, JOB_STATUSES, JobKind, JobStatus, JobStore
from app.observability import telemetry
from app.ollama.groups import batch_specs, benchmark_specs, comparison_specs
from app.ollama.manager import OllamaManager
from app.ollama.names import normalize_model_name
from app.ollama.types import ExecutionOptions
from app.ollama.usage import run_team
from app.settings import Settings

__all__ = ["JOB_KINDS", "JOB_STATUSES", "JobKind", "JobStatus", "Jobs"]


class Jobs:
    def __init__(
        self,
        manager: OllamaManager,
        settings: Settings,
        admission: JobAdmission | None = None,
    ) -> None:
        self.store = JobStore(settings.database_url)
        self.runner = JobRunner(manager, self.store, admission)
        self.queue: JobQueue = make_queue(
            settings.database_url,
            self.store,
            self.runner.run,
            concurrency=settings.job_concurrency,
            stalled_seconds=settings.job_stalled_seconds,
            worker=self.runner.worker,
        )
        self._worker: asyncio.Task[None] | None = None

    @property
    def worker(self) -> str:
        """This process, as the `worker` of the jobs it runs (`host:pid`)."""
        return self.runner.worker

    async def start(self, *, run_jobs: bool) -> None:
        """Connect to the engine; with `run_jobs`, also run jobs in this process."""
        await self.queue.open()
        if run_jobs:
            self._worker = asyncio.create_task(self.queue.work(), name="job-worker")

    async def work(self) -> None:
        """Run jobs until cancelled (the `worker` command)."""
        await self.queue.work()

    async def asubmit_batch(
        self,
        model: str,
        prompts: list[str],
        options: ExecutionOptions | None,
        *,
        max_concurrent: int,
        name: str | None,
        owner: str | None,
    ) -> dict[str, Any]:
        batch_specs(model, prompts, options, max_concurrent)  # InvalidRequest now, not later
        request = {
            "model": model,
            "prompts": prompts,
            "options": _options(options),
            "max_concurrent": max_concurrent,
            "name": name,
        }
        return await self._submit("batch", model, request, len(prompts), owner)

    async def asubmit_benchmark(
        self,
        model: str,
        test_prompts: list[str],
        options: ExecutionOptions | None,
        *,
        owner: str | None,
    ) -> dict[str, Any]:
        benchmark_specs(model, test_prompts, options)
        request = {"model": model, "test_prompts": test_prompts, "options": _options(options)}
        return await self._submit("benchmark", model, request, len(test_prompts), owner)

    async def asubmit_comparison(
        self,
        models: list[str],
        prompt: str,
        options: ExecutionOptions | None,
        *,
        owner: str | None,
    ) -> dict[str, Any]:
        comparison_specs(models, prompt, options)
        request = {"models": models, "prompt": prompt, "options": _options(options)}
        return await self._submit("comparison", ",".join(models), request, len(models), owner)

    async def asubmit_pull(
        self, model: str, backend: str | None, *, owner: str | None
    ) -> dict[str, Any]:
        model = normalize_model_name(model)
        return await self._submit("pull", model, {"model": model, "backend": backend}, 1, owner)

    async def _submit(
        self, kind: JobKind, subject: str, request: dict[str, Any], total: int, owner: str | None
    ) -> dict[str, Any]:
        # Tracing on: the job carries the trace of the request that started it
        # (W3C `traceparent`, continued by the worker that runs it, in any process).
        carrier = telemetry.inject()
        if carrier:
            request = {**request, TRACE_KEY: carrier}
        team = run_team.get()
        if team is not None:  # the job's runs are charged to the team of the key that started it
            request = {**request, TEAM_KEY: team}
        job = await self.store.acreate(kind, subject, request, total=total, owner=owner)
        await self.queue.enqueue(job["id"])
        return job

    async def aget(self, job_id: str) -> dict[str, Any] | None:
        return await self.store.aget(job_id)

    async def alist(self, **filters: Any) -> tuple[list[dict[str, Any]], str | None]:
        """See `JobStore.alist`."""
        return await self.store.alist(**filters)

    async def aevents_after(self, job_id: str, after: int = 0) -> list[dict[str, Any]]:
        return await self.store.aevents_after(job_id, after)

    async def alatest_progress(self, job_id: str) -> dict[str, Any] | None:
        event = await self.store.alatest_event(job_id, "progress")
        return event["data"] if event is not None else None

    async def acancel(self, job_id: str) -> dict[str, Any] | None:
        """Ask a job to stop (see `JobRunner`); the job's record, or None."""
        return await self.store.arequest_cancel(job_id)

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker
            self._worker = None
        await self.queue.aclose()
        await self.store.aclose()


def _options(options: ExecutionOptions | None) -> dict[str, Any] | None:
    return asdict(options) if options is not None else None
