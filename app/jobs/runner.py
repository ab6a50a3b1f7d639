"""Running one job to its end, from wherever an earlier attempt left it.

`JobRunner.run(job_id)` is what a worker calls (through the job engine, see
`app.jobs.queue`). It claims the job (one attempt more, its worker named), runs the
indexes that have no stored run yet, each stored as soon as it finishes, then stores the
report (batch, benchmark or comparison) and ends the job. A job that was running when its
worker died is simply run again: what finished is kept, nothing is run twice.

Cancelling (`JobStore.arequest_cancel`) is seen within `CANCEL_POLL_SECONDS`: no new run
starts, runs in flight are cancelled, and the job ends `cancelled` keeping what finished.

Each run is admitted first by the job's `JobAdmission` (the owner's quotas, see
`app.access.quotas`): once it refuses, no new run starts, the runs in flight finish, and
the job ends `failed` with the reason as its `error` (a batch's report holds the runs that
finished). The runs are charged to the key that started the job (`run_principal`,
`run_team`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import Any, Protocol

from app.backends.gate import as_batch
from app.jobs.store import JobStore
from app.observability import telemetry
from app.ollama.errors import InvalidRequest
from app.ollama.groups import (
    batch_specs,
    benchmark_report,
    benchmark_specs,
    comparison_report,
    comparison_specs,
)
from app.ollama.manager import OllamaManager
from app.ollama.run_spec import RunSpec
from app.ollama.stored_rows import batch_row, benchmark_row, comparison_row
from app.ollama.types import ExecutionOptions, ModelExecutionResult
from app.ollama.usage import run_principal, run_team
from app.storage.tables import ReportRow

__all__ = [
    "CANCEL_POLL_SECONDS",
    "TEAM_KEY",
    "JobAdmission",
    "JobRunner",
    "QuotaStopped",
    "worker_name",
]

logger = logging.getLogger(__name__)

CANCEL_POLL_SECONDS = 0.3
PULL_EVENT_SECONDS = 0.5
TRACE_KEY = "_trace"
"""Where a job's request keeps the trace context of the request that started it."""
TEAM_KEY = "_team"
"""Where a job's request keeps the team of the key that started it (its runs are charged
to that key and team)."""
RUN_KINDS = {"batch": "batch_item", "benchmark": "benchmark", "comparison": "comparison"}


def worker_name() -> str:
    """This process, as a job's `worker` names it: `host:pid`."""
    return f"{socket.gethostname()}:{os.getpid()}"


class JobCancelled(Exception):
    """The job was asked to stop."""


class QuotaStopped(Exception):
    """The job's owner may start no more runs (its quota is spent): the reason."""


class JobAdmission(Protocol):
    """Who a job's runs are charged to, and whether one more may start (the wiring gives
    the access layer's `JobQuotaGate`)."""

    async def team_of(self, owner: str | None) -> str | None:
        """The team of the job's owner (None: none)."""
        ...

    async def refusal(self, owner: str | None) -> str | None:
        """None to start one more run (counted), else why not."""
        ...


class JobRunner:
    """Runs jobs with the core's executor, storing through a `JobStore`."""

    def __init__(
        self, manager: OllamaManager, store: JobStore, admission: JobAdmission | None = None
    ) -> None:
        self.manager = manager
        self.store = store
        self.admission = admission
        self.worker = worker_name()

    async def run(self, job_id: str) -> None:
        job = await self.store.aclaim(job_id, self.worker)
        if job is None:
            return  # finished (or gone) meanwhile
        token = run_principal.set(job["owner"])
        # The team of the key that started the job, kept with it at submission (else the
        # key's team now, as the quota admission knows it).
        team = (job.get("request") or {}).get(TEAM_KEY)
        team_token = run_team.set(
            team if isinstance(team, str) else await self._team_of(job["owner"])
        )
        carrier = (job.get("request") or {}).get(TRACE_KEY)
        try:
            with (
                telemetry.continued(
                    carrier if isinstance(carrier, dict) else None,
                    f"gateway.job {job['kind']}",
                    {"gateway.job.id": job_id, "gateway.job.kind": job["kind"]},
                ),
                as_batch(),  # a job's runs wait behind interactive requests
            ):
                await self._run(job)
        except JobCancelled:
            await self.store.afinish(job_id, "cancelled")
        except QuotaStopped as exc:
            await self.store.afinish(job_id, "failed", str(exc))
        except InvalidRequest as exc:
            await self.store.afinish(job_id, "failed", str(exc))
        except asyncio.CancelledError:
            raise  # the worker is stopping: the job stays running, to be taken over
        except Exception:
            logger.exception("job %s failed", job_id)
            await self.store.afinish(job_id, "failed", "the job failed (see the gateway's log)")
        finally:
            run_team.reset(team_token)
            run_principal.reset(token)

    async def _team_of(self, owner: str | None) -> str | None:
        """The team the job's runs are charged to (None when it cannot be known)."""
        if self.admission is None:
            return None
        try:
            return await self.admission.team_of(owner)
        except Exception:
            logger.warning("the team of the job's key could not be read", exc_info=True)
            return None

    async def _run(self, job: dict[str, Any]) -> None:
        if job["kind"] == "pull":
            await self._pull(job)
            return
        request = job["request"]
        options = ExecutionOptions(**request["options"]) if request.get("options") else None
        if job["kind"] == "batch":
            specs = batch_specs(
                request["model"], request["prompts"], options, request["max_concurrent"]
            )
            concurrency = int(request["max_concurrent"])
        elif job["kind"] == "benchmark":
            specs = benchmark_specs(request["model"], request["test_prompts"], options)
            concurrency = 1  # one after another: one run's latency is not another's queueing
        else:
            specs = comparison_specs(request["models"], request["prompt"], options)
            concurrency = 1
        started = time.perf_counter()
        try:
            await self._run_specs(job, specs, concurrency)
        except QuotaStopped:
            results = await self.store.aruns(job["id"])
            if job["kind"] == "batch" and results:
                await self.store.asave_report(job["id"], self._report(job, specs, results, started))
            raise
        results = await self.store.aruns(job["id"])
        await self.store.asave_report(job["id"], self._report(job, specs, results, started))
        await self.store.afinish(job["id"], "succeeded")

    @staticmethod
    def _report(
        job: dict[str, Any],
        specs: list[RunSpec],
        results: list[ModelExecutionResult],
        started: float,
    ) -> ReportRow:
        """The report row a finished job produced (stored by `JobStore.asave_report`)."""
        request = job["request"]
        if job["kind"] == "batch":
            name = request.get("name") or f"batch-{request['model']}-{job['id'][:8]}"
            return batch_row(results, name)
        if job["kind"] == "benchmark":
            wall = time.perf_counter() - started
            report = benchmark_report(request["model"], specs, results, wall)
            return benchmark_row(report, request["model"])
        by_model = {r.model_name: r for r in results}
        return comparison_row(comparison_report(request["prompt"], by_model))

    async def _run_specs(self, job: dict[str, Any], specs: list[RunSpec], concurrency: int) -> None:
        """Run the specs whose index has no stored run, at most `concurrency` at once."""
        job_id = job["id"]
        done = await self.store.astored_indexes(job_id)
        todo = [(i, s) for i, s in enumerate(specs) if i not in done]
        gate = asyncio.Semaphore(concurrency)
        cancelled = asyncio.Event()
        refused: list[str] = []
        kind = RUN_KINDS[job["kind"]]

        async def one(index: int, spec: RunSpec) -> None:
            async with gate:
                if cancelled.is_set() or refused:
                    return
                if self.admission is not None:
                    reason = await self.admission.refusal(job["owner"])
                    if reason is not None:
                        refused.append(reason)
                        return
                if job["kind"] == "batch":
                    spec.metadata["batch_index"] = index
                result = await self.manager.executor.execute(
                    spec, save_output=False, stored_by_caller=True
                )
            await self.store.astore_run(
                job_id, index, result, kind, lambda stored: progress_of(index, stored)
            )  # None: stored by an earlier attempt

        tasks = [asyncio.create_task(one(i, s)) for i, s in todo]
        watcher = asyncio.create_task(self._watch_cancel(job_id, cancelled, tasks))
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            for task in tasks:
                task.cancel()
        for task in tasks:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error
        if cancelled.is_set():
            raise JobCancelled
        if refused:
            raise QuotaStopped(
                f"stopped taking runs: {refused[0]} "
                f"({len(await self.store.astored_indexes(job_id))} of {len(specs)} runs finished)"
            )

    async def _watch_cancel(
        self, job_id: str, cancelled: asyncio.Event, tasks: Sequence[asyncio.Future[Any]]
    ) -> None:
        while not cancelled.is_set():
            await asyncio.sleep(CANCEL_POLL_SECONDS)
            if await self.store.acancel_requested(job_id):
                cancelled.set()
                for task in tasks:
                    task.cancel()

    async def _pull(self, job: dict[str, Any]) -> None:
        """A pull: Ollama's progress objects as `progress` events."""
        request = job["request"]
        lines: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        failure: list[str] = []

        def on_progress(line: dict[str, Any]) -> None:
            if "error" in line:
                failure.append(str(line["error"]))
            lines.put_nowait(line)

        async def write_events() -> None:
            """Each new status, and the rest at most every `PULL_EVENT_SECONDS` (a large
            pull sends progress many times a second)."""
            last_status, last_at = None, 0.0
            while (line := await lines.get()) is not None:
                now = time.monotonic()
                if line.get("status") == last_status and now - last_at < PULL_EVENT_SECONDS:
                    continue
                last_status, last_at = line.get("status"), now
                await self.store.aevent(job["id"], "progress", line)

        writer = asyncio.create_task(write_events())
        pulling = asyncio.create_task(
            self.manager.adownload_model(
                request["model"], on_progress, backend=request.get("backend")
            )
        )
        cancelled = asyncio.Event()
        watcher = asyncio.create_task(self._watch_cancel(job["id"], cancelled, [pulling]))
        try:
            ok = await pulling
        except asyncio.CancelledError:
            if not cancelled.is_set():
                raise
            ok = False
        finally:
            watcher.cancel()
            lines.put_nowait(None)
            await writer
        if cancelled.is_set():
            raise JobCancelled
        if not ok:
            await self.store.afinish(job["id"], "failed", failure[-1] if failure else None)
            return
        await self.store.afinish(job["id"], "succeeded")


def progress_of(index: int, result: ModelExecutionResult) -> dict[str, Any]:
    """A `progress` event of a batch, benchmark or comparison: one finished run."""
    return {
        "index": index,
        "success": result.success,
        "error_message": result.error_message,
        "tokens_used": result.tokens_used,
        "model": result.model_name,
        "result_id": (result.metadata or {}).get("result_id"),
    }
