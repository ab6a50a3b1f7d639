"""`ModelRunner`: runs built on `OllamaManager` — options, streaming, batches, chats,
context documents, benchmarks and comparisons.

Each seed method is a thin sync door onto an async implementation on the manager's loop
thread; the async methods (`async_*`, `arun_*`) are what the REST layer awaits. All of
them return failed results instead of raising for a backend's or model's failure, and
raise `ValueError` for a caller's mistake before anything is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from app.ollama._execution import (
    ChunkCallback,
    Kind,
    RunSpec,
    require_model_name,
    require_prompt,
    validate_messages,
)
from app.ollama._store import ResultStore
from app.ollama.manager import OllamaManager
from app.ollama.options import RequestPlan, plan_from_execution_options
from app.ollama.types import ExecutionOptions, ModelExecutionResult, StreamingChunk

__all__ = ["CONTEXT_TEMPLATE", "ModelRunner", "build_context_prompt"]

logger = logging.getLogger(__name__)

#: How `run_with_context` lays out documents; its name is recorded in each result.
CONTEXT_TEMPLATE_NAME = "documents-v1"
CONTEXT_TEMPLATE = (
    "Use the following context documents to answer the question. "
    "If they do not contain the answer, say so.\n\n"
    "{documents}"
    "Question: {prompt}"
)
_DOCUMENT_TEMPLATE = "[Document {number}]\n{text}\n\n"
#: Rough characters per token used to fit documents into `context_window`.
CHARS_PER_TOKEN = 4
#: A document cut shorter than this many tokens is dropped instead of kept as a stub.
_MIN_DOCUMENT_TOKENS = 16


def _estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def build_context_prompt(
    prompt: str,
    documents: Sequence[str],
    *,
    context_window: int | None = None,
    reserved_output_tokens: int = 0,
) -> tuple[str, dict[str, Any]]:
    """Lay `documents` and `prompt` into `CONTEXT_TEMPLATE`, trimmed to fit the window.

    Without `context_window` every document goes in whole. With it, the budget is the
    window minus the question, the template and the tokens reserved for the answer
    (estimated at `CHARS_PER_TOKEN` characters a token, since a tokenizer is not at hand);
    documents are taken in order while they fit, the first that does not is cut to the
    remaining budget, and the rest are dropped. Returns the prompt and a description of
    what was used (indices are 0-based positions in `documents`).
    """
    used: list[int] = []
    truncated: list[int] = []
    dropped: list[int] = []
    parts: list[str] = []
    budget: int | None = None
    if context_window is not None:
        overhead = _estimate_tokens(CONTEXT_TEMPLATE.format(documents="", prompt=prompt))
        budget = context_window - overhead - reserved_output_tokens
    for i, doc in enumerate(documents):
        block = _DOCUMENT_TEMPLATE.format(number=i + 1, text=doc)
        if budget is None:
            parts.append(block)
            used.append(i)
            continue
        cost = _estimate_tokens(block)
        if cost <= budget:
            parts.append(block)
            used.append(i)
            budget -= cost
            continue
        frame = _estimate_tokens(_DOCUMENT_TEMPLATE.format(number=i + 1, text=""))
        room_chars = (budget - frame) * CHARS_PER_TOKEN
        if budget - frame >= _MIN_DOCUMENT_TOKENS and not truncated:
            parts.append(_DOCUMENT_TEMPLATE.format(number=i + 1, text=doc[:room_chars]))
            used.append(i)
            truncated.append(i)
            budget = 0
        else:
            dropped.append(i)
    full = CONTEXT_TEMPLATE.format(documents="".join(parts), prompt=prompt)
    info = {
        "context_template": CONTEXT_TEMPLATE_NAME,
        "context_docs_total": len(documents),
        "context_docs_used": used,
        "context_docs_truncated": truncated,
        "context_docs_dropped": dropped,
        "context_estimated_tokens": _estimate_tokens(full),
    }
    return full, info


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


class ModelRunner:
    """Advanced runs over one `OllamaManager` (which owns connections and storage)."""

    def __init__(self, ollama_manager: OllamaManager) -> None:
        self.manager = ollama_manager

    # -- building specs (validation happens here, synchronously) ---------------------

    def _generate_spec(
        self, model_name: str, prompt: str, options: ExecutionOptions | None
    ) -> RunSpec:
        return RunSpec(
            kind="generate",
            model=require_model_name(model_name),
            prompt=require_prompt(prompt),
            plan=plan_from_execution_options(options),
        )

    def _chat_spec(
        self,
        model_name: str,
        messages: Sequence[Mapping[str, Any]],
        options: ExecutionOptions | None,
    ) -> RunSpec:
        checked = validate_messages(messages)
        last_user = next((m["content"] for m in reversed(checked) if m["role"] == "user"), "")
        return RunSpec(
            kind="chat",
            model=require_model_name(model_name),
            prompt=last_user,
            plan=plan_from_execution_options(options),
            messages=checked,
        )

    def _context_spec(
        self,
        model_name: str,
        prompt: str,
        context_docs: Sequence[str],
        options: ExecutionOptions | None,
    ) -> RunSpec:
        prompt = require_prompt(prompt)
        if isinstance(context_docs, str) or not isinstance(context_docs, Sequence):
            raise ValueError("context_docs must be a list of strings")
        for i, doc in enumerate(context_docs):
            if not isinstance(doc, str):
                raise ValueError(f"context_docs[{i}] must be a string, got {type(doc).__name__}")
        plan = plan_from_execution_options(options)
        window = plan.options.get("num_ctx")
        reserved = 0
        if window is not None:
            num_predict = plan.options.get("num_predict", -1)
            # Leave room for the answer, but never more than half the window.
            reserved = min(num_predict, window // 2) if num_predict > 0 else window // 2
        full_prompt, info = build_context_prompt(
            prompt, context_docs, context_window=window, reserved_output_tokens=reserved
        )
        spec = RunSpec(
            kind="generate",
            model=require_model_name(model_name),
            prompt=full_prompt,
            plan=plan,
            metadata={**info, "question": prompt},
        )
        return spec

    # -- single runs -----------------------------------------------------------------

    def run_with_options(
        self,
        model_name: str,
        prompt: str,
        options: ExecutionOptions | None = None,
        save_output: bool = True,
        output_dir: str | None = None,
    ) -> ModelExecutionResult:
        """Generate with `ExecutionOptions` (defaults when None): `max_tokens` becomes
        `num_predict`, `context_window` `num_ctx`, `system_prompt` the system field."""
        spec = self._generate_spec(model_name, prompt, options)
        return self.manager.run_sync(  # type: ignore[no-any-return]
            self.manager.execute(
                spec, save_output=save_output, output_dir=output_dir, store_kind="generate"
            )
        )

    async def async_generate(
        self,
        model_name: str,
        prompt: str,
        options: ExecutionOptions | None = None,
        *,
        save_output: bool = True,
        output_dir: str | None = None,
    ) -> ModelExecutionResult:
        """Async `run_with_options`."""
        spec = self._generate_spec(model_name, prompt, options)
        return await self.manager.execute(
            spec, save_output=save_output, output_dir=output_dir, store_kind="generate"
        )

    def run_streaming(
        self,
        model_name: str,
        prompt: str,
        options: ExecutionOptions | None = None,
        chunk_callback: ChunkCallback | None = None,
        *,
        save_output: bool = True,
    ) -> ModelExecutionResult:
        """Generate and hand each `StreamingChunk` to `chunk_callback` as it arrives.

        The callback runs on the manager's loop thread; the last chunk has `done=True` and
        `stats` with the outcome (`success`, `error_message`, Ollama's counters). The
        result's `response` is exactly the concatenation of the chunks' `content`.
        """
        spec = self._generate_spec(model_name, prompt, options)
        return self.manager.run_sync(  # type: ignore[no-any-return]
            self.manager.execute(
                spec, on_chunk=chunk_callback, save_output=save_output, store_kind="stream"
            )
        )

    async def arun_streaming(
        self,
        model_name: str,
        prompt: str,
        options: ExecutionOptions | None = None,
        chunk_callback: ChunkCallback | None = None,
        *,
        save_output: bool = True,
    ) -> ModelExecutionResult:
        """Async `run_streaming` (the callback runs on the caller's loop)."""
        spec = self._generate_spec(model_name, prompt, options)
        return await self.manager.execute(
            spec, on_chunk=chunk_callback, save_output=save_output, store_kind="stream"
        )

    def async_generate_stream(
        self,
        model_name: str,
        prompt: str,
        options: ExecutionOptions | None = None,
        *,
        save_output: bool = True,
    ) -> AsyncIterator[StreamingChunk]:
        """Yield the chunks `run_streaming` would pass to its callback.

        Always ends with a `done=True` chunk whose `stats` tell success or the error, so a
        consumer (an SSE endpoint) needs no exception handling for backend failures.
        Stopping early cancels the backend request; the partial run is still stored.
        """
        spec = self._generate_spec(model_name, prompt, options)
        return self._stream(spec, save_output=save_output, store_kind="stream")

    def async_chat_stream(
        self,
        model_name: str,
        messages: list[dict[str, Any]],
        options: ExecutionOptions | None = None,
        *,
        save_output: bool = True,
    ) -> AsyncIterator[StreamingChunk]:
        """`async_generate_stream` for a chat history."""
        spec = self._chat_spec(model_name, messages, options)
        return self._stream(spec, save_output=save_output, store_kind="stream")

    async def _stream(
        self, spec: RunSpec, *, save_output: bool, store_kind: str
    ) -> AsyncIterator[StreamingChunk]:
        queue: asyncio.Queue[StreamingChunk] = asyncio.Queue()
        task = asyncio.create_task(
            self.manager.execute(
                spec, on_chunk=queue.put_nowait, save_output=save_output, store_kind=store_kind
            )
        )
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    while not queue.empty():
                        yield queue.get_nowait()
                    task.result()  # re-raise a programming error from the run, if any
                    return
                chunk = getter.result()
                yield chunk
                if chunk.done:
                    return
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def run_conversation(
        self,
        model_name: str,
        messages: list[dict[str, str]],
        options: ExecutionOptions | None = None,
        *,
        save_output: bool = True,
    ) -> ModelExecutionResult:
        """Chat with a message history (`/api/chat`).

        Roles must be `system`, `user`, `assistant` or `tool`; content a string. A
        `system_prompt` in `options` becomes a leading system message unless the history
        has one. The result's `prompt` is the last user message; `metadata["messages"]`
        holds the history sent.
        """
        spec = self._chat_spec(model_name, messages, options)
        return self.manager.run_sync(  # type: ignore[no-any-return]
            self.manager.execute(spec, save_output=save_output, store_kind="chat")
        )

    def request_spec(
        self,
        kind: Kind,
        model_name: str,
        *,
        plan: RequestPlan,
        prompt: str | None = None,
        messages: Sequence[Mapping[str, Any]] | None = None,
        surface: str = "gateway",
    ) -> RunSpec:
        """A validated run of a request already translated to Ollama's terms (`plan`),
        filed under the API it came through (`surface`: gateway, ollama or openai)."""
        if kind == "generate":
            spec = RunSpec(
                kind="generate",
                model=require_model_name(model_name),
                prompt=require_prompt(prompt),
                plan=plan,
            )
        else:
            spec = self._chat_spec(model_name, list(messages or []), None)
            spec.plan = plan
        spec.metadata["surface"] = surface
        return spec

    async def arun_spec(self, spec: RunSpec, *, save_output: bool = True) -> ModelExecutionResult:
        """Run a `request_spec` to its result (stored as its kind)."""
        return await self.manager.execute(spec, save_output=save_output, store_kind=spec.kind)

    def astream_spec(
        self, spec: RunSpec, *, save_output: bool = True
    ) -> AsyncIterator[StreamingChunk]:
        """Stream a `request_spec`: the chunks of `async_generate_stream`."""
        return self._stream(spec, save_output=save_output, store_kind="stream")

    async def async_chat(
        self,
        model_name: str,
        messages: list[dict[str, Any]],
        options: ExecutionOptions | None = None,
        *,
        save_output: bool = True,
    ) -> ModelExecutionResult:
        """Async `run_conversation`."""
        spec = self._chat_spec(model_name, messages, options)
        return await self.manager.execute(spec, save_output=save_output, store_kind="chat")

    def run_with_context(
        self,
        model_name: str,
        prompt: str,
        context_docs: list[str],
        options: ExecutionOptions | None = None,
        *,
        save_output: bool = True,
    ) -> ModelExecutionResult:
        """Generate with documents laid into the prompt by `CONTEXT_TEMPLATE`.

        With `options.context_window`, documents are trimmed to fit (see
        `build_context_prompt`); `metadata` records `context_docs_used`,
        `context_docs_truncated` and `context_docs_dropped`. The result's `prompt` is the
        full prompt sent, `metadata["question"]` the caller's prompt.
        """
        spec = self._context_spec(model_name, prompt, context_docs, options)
        return self.manager.run_sync(  # type: ignore[no-any-return]
            self.manager.execute(spec, save_output=save_output, store_kind="context")
        )

    async def arun_with_context(
        self,
        model_name: str,
        prompt: str,
        context_docs: list[str],
        options: ExecutionOptions | None = None,
        *,
        save_output: bool = True,
    ) -> ModelExecutionResult:
        spec = self._context_spec(model_name, prompt, context_docs, options)
        return await self.manager.execute(spec, save_output=save_output, store_kind="context")

    def async_context_stream(
        self,
        model_name: str,
        prompt: str,
        context_docs: list[str],
        options: ExecutionOptions | None = None,
        *,
        save_output: bool = True,
    ) -> AsyncIterator[StreamingChunk]:
        """`async_generate_stream` with documents laid in as `run_with_context` does."""
        spec = self._context_spec(model_name, prompt, context_docs, options)
        return self._stream(spec, save_output=save_output, store_kind="context")

    async def async_run_model(
        self,
        model_name: str,
        prompt: str,
        options: ExecutionOptions | None = None,
        timeout: int = 300,  # noqa: ASYNC109 - the seed's signature; used as a deadline
        *,
        save_output: bool = True,
    ) -> ModelExecutionResult:
        """Generate within `timeout` seconds; past it the backend request is cancelled and
        a failed result says it timed out."""
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        spec = self._generate_spec(model_name, prompt, options)
        return await self.manager.execute(
            spec, deadline=float(timeout), save_output=save_output, store_kind="generate"
        )

    # -- batches ---------------------------------------------------------------------

    def run_batch(
        self,
        model_name: str,
        prompts: list[str],
        options: ExecutionOptions | None = None,
        max_concurrent: int = 3,
        *,
        save_output: bool = True,
        batch_name: str | None = None,
    ) -> list[ModelExecutionResult]:
        """Run `prompts` with at most `max_concurrent` in flight; results in prompt order.

        One prompt's failure is its own failed result and does not stop the others.
        """
        specs = self._batch_specs(model_name, prompts, options, max_concurrent)
        return self.manager.run_sync(  # type: ignore[no-any-return]
            self._run_batch(specs, max_concurrent, save_output, batch_name)
        )

    async def async_run_batch(
        self,
        model_name: str,
        prompts: list[str],
        options: ExecutionOptions | None = None,
        *,
        max_concurrent: int = 3,
        save_output: bool = True,
        batch_name: str | None = None,
        on_result: Callable[[int, ModelExecutionResult], None] | None = None,
    ) -> list[ModelExecutionResult]:
        """Async `run_batch`; `on_result(index, result)` is called as each prompt finishes."""
        specs = self._batch_specs(model_name, prompts, options, max_concurrent)
        return await self._run_batch(specs, max_concurrent, save_output, batch_name, on_result)

    def _batch_specs(
        self,
        model_name: str,
        prompts: Sequence[str],
        options: ExecutionOptions | None,
        max_concurrent: int,
    ) -> list[RunSpec]:
        if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int):
            raise ValueError(f"max_concurrent must be an integer, got {max_concurrent!r}")
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
        if isinstance(prompts, str) or not isinstance(prompts, Sequence):
            raise ValueError("prompts must be a list of strings")
        return [self._generate_spec(model_name, prompt, options) for prompt in prompts]

    async def _run_batch(
        self,
        specs: list[RunSpec],
        max_concurrent: int,
        save_output: bool,
        batch_name: str | None,
        on_result: Callable[[int, ModelExecutionResult], None] | None = None,
    ) -> list[ModelExecutionResult]:
        gate = asyncio.Semaphore(max_concurrent)

        async def one(index: int, spec: RunSpec) -> ModelExecutionResult:
            async with gate:
                spec.metadata["batch_index"] = index
                result = await self.manager.execute(spec, save_output=False)
            if on_result is not None:
                on_result(index, result)
            return result

        results = list(await asyncio.gather(*(one(i, s) for i, s in enumerate(specs))))
        if save_output and results:
            name = batch_name or f"batch-{specs[0].model}-{time.strftime('%Y%m%d-%H%M%S')}"
            await self._save_group(
                lambda store: store.asave_batch_results(results, name), results, kind="batch"
            )
        return results

    # -- benchmarks and comparisons --------------------------------------------------

    def benchmark_model(
        self,
        model_name: str,
        test_prompts: list[str],
        options: ExecutionOptions | None = None,
        *,
        save_output: bool = True,
    ) -> dict[str, Any]:
        """Run `test_prompts` one after another and summarise speed and reliability.

        Keys: `avg_execution_time` (s, successful runs), `avg_tokens_per_second` (decode
        speed from Ollama's eval counters), `throughput_tokens_per_second` (tokens over
        the benchmark's wall time), `p50_latency`, `p95_latency`,
        `avg_time_to_first_token`, `success_rate`, counts, and `individual_results` (each
        result as a dict). Averages are None when no run succeeded. Prompts run
        sequentially so one run's latency is not another's queueing.
        """
        specs = [self._generate_spec(model_name, p, options) for p in self._prompts(test_prompts)]
        return self.manager.run_sync(  # type: ignore[no-any-return]
            self._benchmark(model_name, specs, save_output)
        )

    async def abenchmark_model(
        self,
        model_name: str,
        test_prompts: list[str],
        options: ExecutionOptions | None = None,
        *,
        save_output: bool = True,
    ) -> dict[str, Any]:
        specs = [self._generate_spec(model_name, p, options) for p in self._prompts(test_prompts)]
        return await self._benchmark(model_name, specs, save_output)

    @staticmethod
    def _prompts(prompts: Sequence[str]) -> Sequence[str]:
        if isinstance(prompts, str) or not isinstance(prompts, Sequence):
            raise ValueError("test_prompts must be a list of strings")
        if not prompts:
            raise ValueError("test_prompts must not be empty")
        return prompts

    async def _benchmark(
        self, model_name: str, specs: list[RunSpec], save_output: bool
    ) -> dict[str, Any]:
        started = time.perf_counter()
        results = []
        for spec in specs:
            results.append(await self.manager.execute(spec, save_output=False))
        wall_time = time.perf_counter() - started
        ok = [r for r in results if r.success]
        latencies = [r.execution_time for r in ok]
        speeds = [
            float(r.metadata["tokens_per_second"])
            for r in ok
            if r.metadata and r.metadata.get("tokens_per_second") is not None
        ]
        ttfts = [
            float(r.metadata["time_to_first_token"])
            for r in ok
            if r.metadata and r.metadata.get("time_to_first_token") is not None
        ]
        total_tokens = sum(r.tokens_used or 0 for r in ok)
        report: dict[str, Any] = {
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
        if save_output:
            report_id = await self._save_group(
                lambda store: store.asave_benchmark_report(report, model_name, results=results),
                results,
                kind="benchmark",
            )
            if report_id is not None:
                report["benchmark_id"] = report_id
        return report

    def create_model_comparison(
        self,
        model_names: list[str],
        test_prompt: str,
        options: ExecutionOptions | None = None,
        *,
        save_output: bool = True,
    ) -> dict[str, Any]:
        """Run one prompt on each model (one after another) and compare them.

        Returns `{"results": {model_name: result dict}, "summary": {...}}`; the summary
        names `fastest_model`, `highest_tokens_per_second` (model and value), and gives
        `response_lengths`, `execution_times`, `tokens_per_second`, `failures` (model ->
        error) and `successful_models`.
        """
        specs = self._comparison_specs(model_names, test_prompt, options)
        return self.manager.run_sync(  # type: ignore[no-any-return]
            self._compare(specs, test_prompt, save_output)
        )

    async def acreate_model_comparison(
        self,
        model_names: list[str],
        test_prompt: str,
        options: ExecutionOptions | None = None,
        *,
        save_output: bool = True,
    ) -> dict[str, Any]:
        specs = self._comparison_specs(model_names, test_prompt, options)
        return await self._compare(specs, test_prompt, save_output)

    def _comparison_specs(
        self, model_names: Sequence[str], test_prompt: str, options: ExecutionOptions | None
    ) -> list[RunSpec]:
        if isinstance(model_names, str) or not isinstance(model_names, Sequence):
            raise ValueError("model_names must be a list of model names")
        if not model_names:
            raise ValueError("model_names must not be empty")
        if len(set(model_names)) != len(model_names):
            raise ValueError("model_names must not repeat a model")
        return [self._generate_spec(name, test_prompt, options) for name in model_names]

    async def _compare(
        self, specs: list[RunSpec], test_prompt: str, save_output: bool
    ) -> dict[str, Any]:
        results: dict[str, ModelExecutionResult] = {}
        for spec in specs:
            results[spec.model] = await self.manager.execute(spec, save_output=False)
        ok = {name: r for name, r in results.items() if r.success}
        speeds = {
            name: float(r.metadata["tokens_per_second"])
            for name, r in ok.items()
            if r.metadata and r.metadata.get("tokens_per_second") is not None
        }
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
                {"model": best_speed, "tokens_per_second": speeds[best_speed]}
                if best_speed
                else None
            ),
            "execution_times": {n: r.execution_time for n, r in results.items()},
            "tokens_per_second": speeds,
            "response_lengths": {n: len(r.response) for n, r in results.items()},
            "tokens_used": {n: r.tokens_used for n, r in results.items()},
        }
        comparison: dict[str, Any] = {
            "results": {n: r.to_dict() for n, r in results.items()},
            "summary": summary,
        }
        if save_output:
            runs = list(results.values())
            comparison_id = await self._save_group(
                lambda store: store.asave_model_comparison(comparison, results=runs),
                runs,
                kind="comparison",
            )
            if comparison_id is not None:
                summary["comparison_id"] = comparison_id
        return comparison

    async def _save_group(
        self,
        save: Callable[[ResultStore], Awaitable[str]],
        results: list[ModelExecutionResult],
        *,
        kind: str,
    ) -> str | None:
        """Store a group report (batch, benchmark, comparison) and its runs, linked to it.

        The storage writes each run's `result_id` and group id into its metadata. A
        storage failure is logged and noted on the runs, never raised.
        """
        store = self.manager.output_manager
        if store is None:
            return None
        try:
            group_id = await save(store)
        except Exception as exc:
            logger.exception("storing a %s report failed", kind)
            for result in results:
                if result.metadata is not None:
                    result.metadata["storage_error"] = f"{type(exc).__name__}: {exc}"
            return None
        return group_id
