"""Group runs: batches, benchmarks and model comparisons.

Checking a group's inputs (to `RunSpec`s, `ValueError` before anything is sent), running
its runs through a `RunExecutor` (as batch runs: they wait behind interactive requests for
a backend's slots), building the benchmark and comparison reports, and storing a report
together with its runs, linked to it. `ModelRunner`'s group methods are doors onto
`GroupRuns`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from app.backends.gate import as_batch
from app.ollama._store import ResultStore, save_group
from app.ollama.errors import InvalidRequest
from app.ollama.executor import RunExecutor
from app.ollama.options import plan_from_execution_options
from app.ollama.run_spec import RunSpec, generate_spec
from app.ollama.types import ExecutionOptions, ModelExecutionResult

__all__ = [
    "GroupRuns",
    "batch_specs",
    "benchmark_report",
    "benchmark_specs",
    "comparison_report",
    "comparison_specs",
]

OnResult = Callable[[int, ModelExecutionResult], None]
SaveReport = Callable[[ResultStore], Awaitable[str]]


def _spec(model_name: str, prompt: str, options: ExecutionOptions | None) -> RunSpec:
    return generate_spec(model_name, prompt, plan_from_execution_options(options))


def batch_specs(
    model_name: str,
    prompts: Sequence[str],
    options: ExecutionOptions | None,
    max_concurrent: int,
) -> list[RunSpec]:
    """One generate run per prompt of a batch."""
    if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int):
        raise InvalidRequest(f"max_concurrent must be an integer, got {max_concurrent!r}")
    if max_concurrent < 1:
        raise InvalidRequest(f"max_concurrent must be at least 1, got {max_concurrent}")
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise InvalidRequest("prompts must be a list of strings")
    return [_spec(model_name, prompt, options) for prompt in prompts]


def benchmark_specs(
    model_name: str, test_prompts: Sequence[str], options: ExecutionOptions | None
) -> list[RunSpec]:
    """One generate run per prompt of a benchmark (at least one prompt)."""
    if isinstance(test_prompts, str) or not isinstance(test_prompts, Sequence):
        raise InvalidRequest("test_prompts must be a list of strings")
    if not test_prompts:
        raise InvalidRequest("test_prompts must not be empty")
    return [_spec(model_name, prompt, options) for prompt in test_prompts]


def comparison_specs(
    model_names: Sequence[str], test_prompt: str, options: ExecutionOptions | None
) -> list[RunSpec]:
    """One generate run of `test_prompt` per model (at least one, none twice)."""
    if isinstance(model_names, str) or not isinstance(model_names, Sequence):
        raise InvalidRequest("model_names must be a list of model names")
    if not model_names:
        raise InvalidRequest("model_names must not be empty")
    if len(set(model_names)) != len(model_names):
        raise InvalidRequest("model_names must not repeat a model")
    return [_spec(name, test_prompt, options) for name in model_names]


def _percentile(values: Sequence[float], fraction: float) -> float | None:
    """Linear-interpolated percentile (`fraction` in 0..1); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _tokens_per_second(result: ModelExecutionResult) -> float | None:
    """The decode speed Ollama's counters give for a run, when they were reported."""
    speed = (result.metadata or {}).get("tokens_per_second")
    return None if speed is None else float(speed)


def benchmark_report(
    model_name: str,
    specs: Sequence[RunSpec],
    results: Sequence[ModelExecutionResult],
    wall_time: float,
) -> dict[str, Any]:
    """Speed and reliability of a benchmark's runs (see `ModelRunner.benchmark_model`)."""
    ok = [r for r in results if r.success]
    latencies = [r.execution_time for r in ok]
    speeds = [s for s in map(_tokens_per_second, ok) if s is not None]
    ttfts = [
        float(r.metadata["time_to_first_token"])
        for r in ok
        if r.metadata and r.metadata.get("time_to_first_token") is not None
    ]
    total_tokens = sum(r.tokens_used or 0 for r in ok)
    return {
        "model_name": model_name,
        "total_prompts": len(results),
        "successful_runs": len(ok),
        "failed_runs": len(results) - len(ok),
        "success_rate": len(ok) / len(results),
        "avg_execution_time": _mean(latencies),
        "min_execution_time": min(latencies) if latencies else None,
        "max_execution_time": max(latencies) if latencies else None,
        "p50_latency": _percentile(latencies, 0.50),
        "p95_latency": _percentile(latencies, 0.95),
        "avg_tokens_per_second": _mean(speeds),
        "throughput_tokens_per_second": total_tokens / wall_time if wall_time > 0 else None,
        "avg_time_to_first_token": _mean(ttfts),
        "total_tokens": total_tokens,
        "wall_time": wall_time,
        "options": specs[0].plan.describe() if specs else None,
        "errors": [r.error_message for r in results if not r.success],
        "individual_results": [r.to_dict() for r in results],
    }


def comparison_report(test_prompt: str, results: dict[str, ModelExecutionResult]) -> dict[str, Any]:
    """`{"results": {model: result dict}, "summary": {...}}` of one prompt run on each
    model (see `ModelRunner.create_model_comparison`)."""
    ok = {name: r for name, r in results.items() if r.success}
    speeds = {name: speed for name, r in ok.items() if (speed := _tokens_per_second(r)) is not None}
    fastest = min(ok, key=lambda name: ok[name].execution_time) if ok else None
    best_speed = max(speeds, key=lambda name: speeds[name]) if speeds else None
    summary: dict[str, Any] = {
        "prompt": test_prompt,
        "models": list(results),
        "successful_models": list(ok),
        "failures": {n: r.error_message for n, r in results.items() if not r.success},
        "fastest_model": fastest,
        "fastest_time": ok[fastest].execution_time if fastest else None,
        "highest_tokens_per_second": (
            {"model": best_speed, "tokens_per_second": speeds[best_speed]} if best_speed else None
        ),
        "execution_times": {n: r.execution_time for n, r in results.items()},
        "tokens_per_second": speeds,
        "response_lengths": {n: len(r.response) for n, r in results.items()},
        "tokens_used": {n: r.tokens_used for n, r in results.items()},
    }
    return {"results": {n: r.to_dict() for n, r in results.items()}, "summary": summary}


class GroupRuns:
    """Runs groups through `executor`; stores their reports in `store()` (called only
    when something is saved, so a default store is not made for nothing)."""

    def __init__(self, executor: RunExecutor, store: Callable[[], ResultStore]) -> None:
        self.executor = executor
        self._store = store

    async def batch(
        self,
        specs: list[RunSpec],
        max_concurrent: int,
        save_output: bool,
        batch_name: str | None,
        on_result: OnResult | None = None,
    ) -> list[ModelExecutionResult]:
        """Run `specs` with at most `max_concurrent` in flight; results in spec order."""
        gate = asyncio.Semaphore(max_concurrent)

        async def one(index: int, spec: RunSpec) -> ModelExecutionResult:
            async with gate:
                spec.metadata["batch_index"] = index
                result = await self.executor.execute(
                    spec, save_output=False, stored_by_caller=save_output
                )
            if on_result is not None:
                on_result(index, result)
            return result

        with as_batch():  # its runs wait behind interactive requests
            results = list(await asyncio.gather(*(one(i, s) for i, s in enumerate(specs))))
        if save_output and results:
            name = batch_name or f"batch-{specs[0].model}-{time.strftime('%Y%m%d-%H%M%S')}"
            await self._save(
                lambda store: store.asave_batch_results(results, name), results, kind="batch"
            )
        return results

    async def benchmark(
        self, model_name: str, specs: list[RunSpec], save_output: bool
    ) -> dict[str, Any]:
        """Run `specs` one after another (so one run's latency is not another's queueing)
        and report on them; stored, each run in `individual_results` names the report as
        its `group_id`."""
        started = time.perf_counter()
        results = []
        with as_batch():
            for spec in specs:
                results.append(
                    await self.executor.execute(
                        spec, save_output=False, stored_by_caller=save_output
                    )
                )
        report = benchmark_report(model_name, specs, results, time.perf_counter() - started)
        if save_output:
            await self._save(
                lambda store: store.asave_benchmark_report(report, model_name, results=results),
                results,
                kind="benchmark",
            )
            report["individual_results"] = [r.to_dict() for r in results]  # with their ids
        return report

    async def compare(
        self, specs: list[RunSpec], test_prompt: str, save_output: bool
    ) -> dict[str, Any]:
        """Run each model's spec one after another and compare them; stored, each model's
        run in `results` names the comparison as its `group_id`."""
        results: dict[str, ModelExecutionResult] = {}
        with as_batch():
            for spec in specs:
                results[spec.model] = await self.executor.execute(
                    spec, save_output=False, stored_by_caller=save_output
                )
        comparison, _ = await self.report_comparison(test_prompt, results, save_output)
        return comparison

    async def report_comparison(
        self, test_prompt: str, results: dict[str, ModelExecutionResult], save_output: bool
    ) -> tuple[dict[str, Any], str | None]:
        """The comparison report of `results` (model -> run, in the models' order) and,
        when `save_output`, its stored id (its runs stored with it, their ids in it)."""
        comparison = comparison_report(test_prompt, results)
        report_id = None
        if save_output:
            runs = list(results.values())
            report_id = await self._save(
                lambda store: store.asave_model_comparison(comparison, results=runs),
                runs,
                kind="comparison",
            )
            comparison["results"] = {n: r.to_dict() for n, r in results.items()}  # with ids
        return comparison, report_id

    async def _save(
        self, save: SaveReport, results: list[ModelExecutionResult], *, kind: str
    ) -> str | None:
        return await save_group(self._store(), save, results, kind=kind)
