"""`ModelRunner`: runs built on `OllamaManager` — options, streaming, batches, chats,
context documents, benchmarks and comparisons.

Each seed method is a thin sync door onto an async implementation on the manager's loop
thread; the async methods (`async_*`, `arun_*`) are what the REST layer awaits. All of
them return failed results instead of raising for a backend's or model's failure, and
raise `ValueError` for a caller's mistake before anything is sent.

Runs go through the manager's `RunExecutor`; group runs (batches, benchmarks, comparisons)
and their reports are app.ollama.groups', the context prompt app.ollama.context's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from app.ollama.comparison_stream import ComparisonEvent, stream_comparison
from app.ollama.context import context_spec
from app.ollama.errors import InvalidRequest
from app.ollama.groups import GroupRuns, batch_specs, benchmark_specs, comparison_specs
from app.ollama.manager import OllamaManager
from app.ollama.metadata import Surface
from app.ollama.options import RequestPlan, plan_from_execution_options
from app.ollama.run_spec import ChunkCallback, Kind, RunSpec, chat_spec, generate_spec
from app.ollama.types import ExecutionOptions, ModelExecutionResult, StreamingChunk

__all__ = ["ModelRunner"]


class ModelRunner:
    """Advanced runs over one `OllamaManager` (which owns connections and storage)."""

    def __init__(self, ollama_manager: OllamaManager) -> None:
        self.manager = ollama_manager

    @property
    def _groups(self) -> GroupRuns:
        manager = self.manager
        return GroupRuns(manager.executor, lambda: manager.output_manager)

    # -- building specs (validation happens here, synchronously) ---------------------

    def _generate_spec(
        self, model_name: str, prompt: str, options: ExecutionOptions | None
    ) -> RunSpec:
        return generate_spec(model_name, prompt, plan_from_execution_options(options))

    def _chat_spec(
        self,
        model_name: str,
        messages: Sequence[Mapping[str, Any]],
        options: ExecutionOptions | None,
    ) -> RunSpec:
        return chat_spec(model_name, messages, plan_from_execution_options(options))

    def _context_spec(
        self,
        model_name: str,
        prompt: str,
        context_docs: Sequence[str],
        options: ExecutionOptions | None,
    ) -> RunSpec:
        return context_spec(model_name, prompt, context_docs, plan_from_execution_options(options))

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
        return self.manager.run_sync(
            self.manager.executor.execute(
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
        return await self.manager.executor.execute(
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
        return self.manager.run_sync(
            self.manager.executor.execute(
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
        return await self.manager.executor.execute(
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
        return self.manager.executor.stream(spec, save_output=save_output, store_kind="stream")

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
        return self.manager.executor.stream(spec, save_output=save_output, store_kind="stream")

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
        return self.manager.run_sync(
            self.manager.executor.execute(spec, save_output=save_output, store_kind="chat")
        )

    def request_spec(
        self,
        kind: Kind,
        model_name: str,
        *,
        plan: RequestPlan,
        prompt: str | None = None,
        messages: Sequence[Mapping[str, Any]] | None = None,
        surface: Surface = "gateway",
    ) -> RunSpec:
        """A validated run of a request already translated to Ollama's terms (`plan`),
        filed under the API it came through (`surface`: see `metadata.Surface`)."""
        if kind == "generate":
            spec = generate_spec(model_name, prompt, plan)
        else:
            spec = chat_spec(model_name, list(messages or []), plan)
        spec.metadata["surface"] = surface
        return spec

    async def arun_spec(self, spec: RunSpec, *, save_output: bool = True) -> ModelExecutionResult:
        """Run a `request_spec` to its result (stored as its kind)."""
        return await self.manager.executor.execute(
            spec, save_output=save_output, store_kind=spec.kind
        )

    def astream_spec(
        self, spec: RunSpec, *, save_output: bool = True
    ) -> AsyncIterator[StreamingChunk]:
        """Stream a `request_spec`: the chunks of `async_generate_stream`."""
        return self.manager.executor.stream(spec, save_output=save_output, store_kind="stream")

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
        return await self.manager.executor.execute(spec, save_output=save_output, store_kind="chat")

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
        return self.manager.run_sync(
            self.manager.executor.execute(spec, save_output=save_output, store_kind="context")
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
        return await self.manager.executor.execute(
            spec, save_output=save_output, store_kind="context"
        )

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
        return self.manager.executor.stream(spec, save_output=save_output, store_kind="context")

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
            raise InvalidRequest(f"timeout must be a positive number of seconds, got {timeout!r}")
        spec = self._generate_spec(model_name, prompt, options)
        return await self.manager.executor.execute(
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
        specs = batch_specs(model_name, prompts, options, max_concurrent)
        return self.manager.run_sync(
            self._groups.batch(specs, max_concurrent, save_output, batch_name)
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
        specs = batch_specs(model_name, prompts, options, max_concurrent)
        return await self._groups.batch(specs, max_concurrent, save_output, batch_name, on_result)

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
        specs = benchmark_specs(model_name, test_prompts, options)
        return self.manager.run_sync(self._groups.benchmark(model_name, specs, save_output))

    async def abenchmark_model(
        self,
        model_name: str,
        test_prompts: list[str],
        options: ExecutionOptions | None = None,
        *,
        save_output: bool = True,
    ) -> dict[str, Any]:
        specs = benchmark_specs(model_name, test_prompts, options)
        return await self._groups.benchmark(model_name, specs, save_output)

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
        specs = comparison_specs(model_names, test_prompt, options)
        return self.manager.run_sync(self._groups.compare(specs, test_prompt, save_output))

    async def acreate_model_comparison(
        self,
        model_names: list[str],
        test_prompt: str,
        options: ExecutionOptions | None = None,
        *,
        save_output: bool = True,
    ) -> dict[str, Any]:
        specs = comparison_specs(model_names, test_prompt, options)
        return await self._groups.compare(specs, test_prompt, save_output)

    def async_comparison_stream(
        self,
        model_names: list[str],
        test_prompt: str,
        options: ExecutionOptions | None = None,
        *,
        save_output: bool = True,
    ) -> AsyncIterator[ComparisonEvent]:
        """`acreate_model_comparison` with every model's run at once and streamed: each
        piece as a `ModelChunk` (a run's closing chunk carries its result), then one
        `ComparisonDone` with the report and its stored id. Leaving early cancels the runs
        still going; the comparison is stored with them as cancelled."""
        specs = comparison_specs(model_names, test_prompt, options)
        return stream_comparison(self._groups, specs, test_prompt, save_output)
