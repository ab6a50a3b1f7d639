"""A model comparison streamed as it runs: every model's run at once, their pieces as they
come, then the comparison report, stored with its runs as `GroupRuns.compare` stores one
(`GroupRuns.report_comparison`).

The runs are interactive (someone watches them): they do not wait behind other requests as
a comparison's runs from `POST /gateway/comparisons` or a job do. They read their backends
at the caller's pace: all of them pause while `STREAM_BUFFER` pieces wait for the caller.
A caller that leaves cancels the runs that are still going; the comparison is stored all
the same, those runs as cancelled with the text they had, so nothing that ran is lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from app.ollama.executor import STREAM_BUFFER, ChunkBuffer
from app.ollama.groups import GroupRuns
from app.ollama.run_spec import RunSpec
from app.ollama.types import ModelExecutionResult, StreamingChunk

__all__ = ["ComparisonDone", "ComparisonEvent", "ModelChunk", "stream_comparison"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelChunk:
    """A piece of one model's run; its closing `done` chunk carries the run's result."""

    model: str
    chunk: StreamingChunk


@dataclass(frozen=True, slots=True)
class ComparisonDone:
    """The comparison's end: its report (`comparison_report`'s shape) and stored id."""

    report: dict[str, Any]
    report_id: str | None


ComparisonEvent = ModelChunk | ComparisonDone


async def stream_comparison(
    groups: GroupRuns, specs: list[RunSpec], test_prompt: str, save_output: bool
) -> AsyncIterator[ComparisonEvent]:
    """Run `specs` (one per model, see `comparison_specs`) at once; yield their pieces as
    `ModelChunk`s as they come, then one `ComparisonDone`."""
    buffer: ChunkBuffer[ModelChunk] = ChunkBuffer(STREAM_BUFFER)
    results: dict[str, ModelExecutionResult] = {}

    def taker(model: str) -> Callable[[StreamingChunk], None]:
        def take(chunk: StreamingChunk) -> None:
            if chunk.done and chunk.result is not None:
                results[model] = chunk.result
            buffer.put(ModelChunk(model, chunk))

        return take

    runs = [
        asyncio.create_task(
            groups.executor.execute(
                spec,
                on_chunk=taker(spec.model),
                pace=buffer.room,
                save_output=False,
                stored_by_caller=save_output,
            )
        )
        for spec in specs
    ]

    async def collect() -> tuple[dict[str, Any], str | None]:
        """Wait for every run (cancelled ones too), then report and store: a task of its
        own, so that a caller who leaves does not take the storing with it."""
        await asyncio.wait(runs)
        buffer.end()
        for run in runs:
            if not run.cancelled() and (error := run.exception()) is not None:
                raise error  # a programming error: no result to report
        ordered = {spec.model: results[spec.model] for spec in specs}
        return await groups.report_comparison(test_prompt, ordered, save_output)

    collector = asyncio.create_task(collect())
    unwatched = groups.executor.unwatched
    unwatched.add(collector)  # held until it ends, also when the caller leaves
    collector.add_done_callback(_forget(unwatched))
    left = True
    try:
        while (piece := await buffer.get()) is not None:
            yield piece
        left = False
    finally:
        if left:  # stop the runs; the collector stores them as cancelled
            for run in runs:
                run.cancel()
    report, report_id = await asyncio.shield(collector)
    yield ComparisonDone(report, report_id)


def _forget(unwatched: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def forget(task: asyncio.Task[Any]) -> None:
        unwatched.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.error("a streamed comparison was not stored: %r", error)

    return forget
