"""`RunExecutor`: one run, from a validated `RunSpec` to a stored `ModelExecutionResult`.

The execution core shared by `OllamaManager`, `ModelRunner` and the relay: it streams from
the best backend (failing over to the next: starting over while the caller has nothing,
continuing the answer once it has part of it) or runs the
`ollama` binary in CLI mode, keeps the deadline, builds the result and its metadata,
reports the run's usage and stores it. Storage and the server check are the owner's
(`OllamaManager`), handed in as callables.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from app.backends.client import OllamaClient
from app.backends.errors import BackendBusy, BackendError, StreamInterrupted
from app.backends.pool import BackendPool
from app.backends.prefix import Prompt
from app.backends.state import BackendState
from app.local.cli_mode import OllamaCli
from app.observability import telemetry
from app.ollama import tracing
from app.ollama._store import SaveResult
from app.ollama.metadata import ErrorKind, RunMetadata, RunMode, as_plain_dict, error_kind
from app.ollama.names import same_model
from app.ollama.run_spec import (
    ChunkCallback,
    Kind,
    RunSpec,
    StreamAccumulator,
    ollama_metrics,
)
from app.ollama.stream_resume import StreamResume, continuation_body, resume_refusal
from app.ollama.types import ModelExecutionResult, StreamingChunk
from app.ollama.usage import UsageObserver, run_principal, run_team, usage_of, usage_sink
from app.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.trace import Span

__all__ = ["MAX_ATTEMPTS", "RunExecutor"]

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
"""Backends a run may be tried on (started over or continued) before it fails."""


STREAM_BUFFER = 32
"""Chunks a streamed run may hold for its caller before the backend is read further."""


T = TypeVar("T")


class ChunkBuffer(Generic[T]):
    """The chunks of a streamed run on their way to its caller, with room to wait for:
    `put` never blocks (the run's callback is synchronous), `room` waits until fewer than
    `limit` are held, so the run reads its backend at the caller's pace."""

    def __init__(self, limit: int) -> None:
        self.queue: asyncio.Queue[T | None] = asyncio.Queue()
        self.limit = limit
        self._room = asyncio.Event()
        self._room.set()

    def put(self, chunk: T) -> None:
        self.queue.put_nowait(chunk)
        if self.queue.qsize() >= self.limit:
            self._room.clear()

    def end(self) -> None:
        """No more chunks: `get` returns None after those already held."""
        self.queue.put_nowait(None)

    async def get(self) -> T | None:
        chunk = await self.queue.get()
        if self.queue.qsize() < self.limit:
            self._room.set()
        return chunk

    async def room(self) -> None:
        await self._room.wait()


async def whole_reply(
    client: OllamaClient, kind: Kind, payload: dict[str, Any], read_timeout: float
) -> dict[str, Any]:
    """`payload` asked with `stream: false`: the reply, checked as a stream's last line is
    (an `error` in it, or no `done: true`, is the backend's failure)."""
    if kind == "generate":
        reply = await client.generate(payload, timeout=read_timeout)
    else:
        reply = await client.chat(payload, timeout=read_timeout)
    if "error" in reply:
        raise BackendError(str(reply["error"]), status=200, url=client.base_url)
    if reply.get("done") is not True:
        raise StreamInterrupted(
            f"reply from backend {client.base_url} has no final chunk",
            status=200,
            url=client.base_url,
        )
    return reply


class RunExecutor:
    """Runs `RunSpec`s on a backend pool (or through `cli`) and builds their results.

    `ensure_server` is awaited before each run (the owner's `auto_start_server` check);
    `store` stores a finished result (see `app.ollama._store.store_result`). Every
    finished run's `RunUsage` goes to `usage_observers` and to the context's `usage_sink`.
    """

    def __init__(
        self,
        pool: BackendPool,
        settings: Settings,
        *,
        cli: OllamaCli | None,
        ensure_server: Callable[[], Awaitable[None]],
        store: SaveResult,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.cli = cli
        self.ensure_server = ensure_server
        self.store = store
        self.usage_observers: list[UsageObserver] = []
        self.unstored_observers: list[Callable[[ModelExecutionResult], None]] = []
        """Told of each finished run nobody stores (`save_output=False` and not
        `stored_by_caller`): the usage ledger adds those from memory."""
        self.unwatched: set[asyncio.Task[Any]] = set()
        """Work that ends on its own after its caller left (a streamed comparison storing
        its cancelled runs), held here until it ends."""

    async def execute(
        self,
        spec: RunSpec,
        *,
        on_chunk: ChunkCallback | None = None,
        pace: Callable[[], Awaitable[None]] | None = None,
        deadline: float | None = None,
        save_output: bool = True,
        output_dir: str | None = None,
        store_kind: str = "generate",
        store_links: Mapping[str, str | None] | None = None,
        stored_by_caller: bool = False,
    ) -> ModelExecutionResult:
        """Run `spec` to a `ModelExecutionResult`.

        With `on_chunk`, the backend is asked to stream: it gives time-to-first-token,
        keeps the partial text when a stream breaks, and a cancelled or timed-out run
        closes the connection so the backend stops generating. Without one (nobody takes
        the pieces) it is asked for one JSON reply (`stream: false`, cheaper to read): a
        failed backend is still failed over (the run starts over, as it would), a
        cancelled or timed-out run still closes the connection, `chunks` in the metadata
        is then 1 and `time_to_first_token` an estimate (`feed_whole_reply`). The overall deadline is `deadline`,
        else the options' timeout, else `Settings.request_timeout`. A cancelled run is
        stored as failed before the cancellation propagates. `on_chunk` receives every
        piece, then one closing `done` chunk whose `stats` describe the outcome (a
        cancelled run's too, just before the cancellation propagates).
        """
        acc = StreamAccumulator(on_chunk)
        acc.pace = pace
        deadline = deadline or spec.plan.timeout or self.settings.request_timeout
        mode: RunMode = "cli" if self.cli is not None and spec.kind == "generate" else "http"
        backend: list[str] = []
        error: str | None = None
        error_type: ErrorKind | None = None
        error_status: int | None = None
        cancelled: asyncio.CancelledError | None = None
        run_span = tracing.start_run_span(spec, surface=_surface(spec))
        try:
            with telemetry.use_span(run_span):
                async with asyncio.timeout(deadline):
                    await self.ensure_server()
                    if mode == "cli":
                        await self._execute_cli(spec, acc, backend)
                    else:
                        await self._execute_http(spec, acc, backend, deadline, run_span)
        except TimeoutError:
            error, error_type = f"timed out after {deadline:g}s", "BackendTimeout"
        except BackendError as exc:
            error, error_type, error_status = str(exc), error_kind(exc), exc.status
        except asyncio.CancelledError as exc:
            cancelled = exc
            error, error_type = "cancelled before the run finished", "Cancelled"
        except BaseException as exc:  # a bug: no result; the run's span still ends
            telemetry.end_span(run_span, exc)
            raise
        result = self.build_result(
            spec,
            acc,
            mode=mode,
            backend=backend,
            error=error,
            error_type=error_type,
            error_status=error_status,
        )
        tracing.finish_run_span(run_span, spec, acc, result)
        if save_output:
            with telemetry.span("gateway.storage.save", {"gateway.storage.kind": store_kind}):
                saving = self.store(
                    result, kind=store_kind, output_dir=output_dir, links=store_links
                )
                if cancelled is not None:
                    # Shielded: the cancelled run is stored although its caller is gone.
                    with contextlib.suppress(Exception):
                        await asyncio.shield(saving)
                else:
                    await saving
        elif not stored_by_caller:
            self._report_unstored(result)
        acc.finish(result)  # a cancelled run's closing chunk too: its caller may keep it
        if cancelled is not None:
            raise cancelled
        return result

    async def stream(
        self, spec: RunSpec, *, save_output: bool, store_kind: str, stored_by_caller: bool = False
    ) -> AsyncIterator[StreamingChunk]:
        """`execute` as an async iterator of its chunks, ending with the `done` chunk.

        Leaving the iteration early cancels the run (which is then stored as cancelled).
        The backend is read no faster than the caller takes the chunks: at most
        `STREAM_BUFFER` wait between them, so a slow reader holds little memory.
        """
        buffer: ChunkBuffer[StreamingChunk] = ChunkBuffer(STREAM_BUFFER)
        task = asyncio.create_task(
            self.execute(
                spec,
                on_chunk=buffer.put,
                pace=buffer.room,
                save_output=save_output,
                store_kind=store_kind,
                stored_by_caller=stored_by_caller,
            )
        )
        # The run's end puts a sentinel after its last chunk: one queue wait per chunk,
        # no task or `asyncio.wait` per chunk.
        task.add_done_callback(lambda _: buffer.end())
        try:
            while True:
                chunk = await buffer.get()
                if chunk is None:  # the run ended without its done chunk
                    task.result()  # re-raise a programming error from the run, if any
                    return
                yield chunk
                if chunk.done:
                    return
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _execute_http(
        self,
        spec: RunSpec,
        acc: StreamAccumulator,
        backend: list[str],
        deadline: float,
        run_span: Span | None = None,
    ) -> None:
        """Stream from the best backend; fail over to the next, at most `MAX_ATTEMPTS`
        backends in all, within the run's deadline.

        A backend that fails (no connection, 5xx, timeout, full queue, or a reply cut
        short) is counted by the pool's circuit breaker and the next candidate is tried.
        While the caller has received nothing the run starts over there; what counts is the
        first piece sent to the caller, not the first byte received from the backend, so a
        run whose caller waits for the whole result (no chunk callback) starts over even
        after the backend began answering. Once the caller has part of the answer, the next
        backend continues it instead (`app.ollama.stream_resume`); where that is not
        possible the failure ends the run, its partial text kept.
        """
        prompt = self._prompt(spec)
        choice = tracing.choice_span(spec.model)
        with telemetry.ending(choice):
            with telemetry.use_span(choice):
                candidates = await self.pool.candidates(
                    spec.model, has_model=same_model, prompt=prompt
                )
            tracing.candidates_ranked(choice, candidates)
            await self._attempts(
                spec, acc, backend, deadline, candidates, (choice, run_span), prompt
            )

    def _prompt(self, spec: RunSpec) -> Prompt | None:
        """The run's prompt as the pool's prefix index sees it (None when it is off)."""
        if spec.kind == "chat":
            body = spec.payload()
            return self.pool.chat_prompt(
                spec.model,
                body.get("messages") or [],
                tools=body.get("tools"),
                session=spec.session,
            )
        return self.pool.generate_prompt(
            spec.model,
            spec.prompt,
            system=spec.plan.system,
            raw=spec.plan.extra.get("raw") is True,
            session=spec.session,
        )

    async def _attempts(
        self,
        spec: RunSpec,
        acc: StreamAccumulator,
        backend: list[str],
        deadline: float,
        candidates: list[BackendState],
        spans: tuple[Span | None, Span | None],
        prompt: Prompt | None,
    ) -> None:
        """`_execute_http`'s tries, on `candidates` in order."""
        choice, run_span = spans
        request = spec.payload()
        payload, kind = request, spec.kind
        failed_over: list[str] = []
        resume = StreamResume(acc)
        for attempt, state in enumerate(candidates[:MAX_ATTEMPTS]):
            backend[:] = [state.client.base_url]
            resume.begin(state.client.base_url)
            received = False
            asked_at = time.perf_counter()
            try:
                async with self.pool.lease(state, spec.model, prompt=prompt):
                    tracing.backend_chosen(choice, run_span, state, asked_at, attempt, prompt)
                    client = state.client
                    while True:
                        try:
                            if acc.on_chunk is None:  # nobody takes the pieces: one JSON reply
                                reply = await whole_reply(client, kind, payload, deadline)
                                received = True
                                acc.feed_whole_reply(kind, reply)
                            else:
                                if kind == "generate":
                                    stream = client.generate_stream(payload, timeout=deadline)
                                else:
                                    stream = client.chat_stream(payload, timeout=deadline)
                                async with contextlib.aclosing(stream) as chunks:
                                    async for chunk in chunks:
                                        received = True
                                        acc.feed_ollama_chunk(kind, chunk)
                                        resume.observe()
                                        if acc.pace is not None:
                                            await acc.pace()
                        except BackendError as refused:
                            if received or not _thinking_refused(spec, payload, refused):
                                raise
                            # The model cannot think: ask the same backend again without it
                            # (and any continuation of the answer elsewhere too).
                            payload, request = _without_think(spec, payload, request)
                            continue
                        break
            except BackendError as exc:
                backend_fault = exc.status is None or exc.status >= 500 or received
                if backend_fault and not isinstance(exc, BackendBusy):
                    self.pool.record_failure(state, exc)
                last = attempt == min(len(candidates), MAX_ATTEMPTS) - 1
                delivered = acc.fed > 0 and not acc.restartable
                refusal = resume_refusal(spec.kind, request, acc) if delivered else None
                continued = None
                if delivered and refusal is None:
                    continued = continuation_body(spec.kind, request, acc)
                    if continued is None:  # num_predict ran out at the seam: complete
                        resume.cut(exc)
                        acc.final = resume.final_at_limit()
                        spec.metadata.update(resume.metadata())
                        return
                if last or refusal or not (backend_fault or isinstance(exc, BackendBusy)):
                    if delivered:
                        spec.metadata["not_resumed"] = refusal or (
                            "no other backend to continue on" if last else f"refused: {exc}"
                        )
                    spec.metadata.update(resume.metadata())
                    raise
                tracing.failover(run_span, state, exc)
                failed_over.append(f"{state.client.base_url}: {exc}")
                spec.metadata["failed_over_from"] = failed_over
                if continued is not None:
                    resume.cut(exc)
                    spec.metadata.update(resume.metadata())
                    payload, kind = continued, "chat"
                elif received:
                    acc.restart()
                continue
            self.pool.record_success(state)
            if not resume.resumed:  # its prompt and reply are cached there now
                self.pool.served(prompt, state, reply=acc.text, final=acc.final)
            if resume.resumed:
                resume.finished()
                acc.final = resume.merged_final(acc.final)
                spec.metadata.update(resume.metadata())
            return

    async def _execute_cli(self, spec: RunSpec, acc: StreamAccumulator, backend: list[str]) -> None:
        assert self.cli is not None
        backend.append(self.cli.base_url)
        ignored = sorted(spec.plan.options)
        if spec.plan.system:
            ignored.append("system")
        if spec.plan.format is not None and spec.plan.format != "json":
            ignored.append("format")
        if spec.plan.keep_alive is not None:
            ignored.append("keep_alive")
        if ignored:
            # `ollama run` takes no sampling options or system prompt on its command line.
            spec.metadata["ignored_options"] = ignored
        run = await self.cli.run(
            spec.model, spec.prompt, json_format=spec.plan.format == "json", on_text=acc.feed
        )
        acc.final = {"done": True, **run.stats}

    def build_result(
        self,
        spec: RunSpec,
        acc: StreamAccumulator,
        *,
        mode: RunMode,
        backend: list[str],
        error: str | None,
        error_type: ErrorKind | None,
        error_status: int | None,
    ) -> ModelExecutionResult:
        """The result of a finished run (failed when `error` is set), its usage reported.

        `metadata` holds the request as sent, Ollama's counters, time to first token, the
        backend, thinking and tool calls; a failed run keeps its `partial_response`.
        """
        execution_time = time.perf_counter() - acc.started
        metadata: RunMetadata = {
            "kind": spec.kind,
            "mode": mode,
            "backend": backend[0] if backend else None,
            "request": spec.plan.describe(),
        }
        if acc.on_chunk is not None:  # the caller took the answer piece by piece
            metadata["request"]["stream"] = True
        if spec.messages is not None:
            metadata["messages"] = spec.messages[spec.stored_history :]
        metadata.update(spec.metadata)
        principal = run_principal.get()
        if principal is not None:
            metadata.setdefault("principal", principal)
        team = run_team.get()
        if team is not None:
            metadata.setdefault("team", team)
        metrics = ollama_metrics(acc.final)
        metadata.update(metrics)
        if acc.time_to_first_token is not None:
            metadata["time_to_first_token"] = acc.time_to_first_token
        metadata["chunks"] = len(acc.pieces)
        if acc.thinking:
            metadata["thinking"] = str(acc.thinking)
        if acc.tool_calls:
            metadata["tool_calls"] = acc.tool_calls
        if error is not None:
            metadata["error_type"] = error_type or "BackendError"
            if error_status is not None:
                metadata["error_status"] = error_status
            metadata["partial_response"] = acc.text
        result = ModelExecutionResult(
            model_name=spec.model,
            prompt=spec.prompt,
            response=acc.text if error is None else "",
            execution_time=execution_time,
            tokens_used=metrics.get("eval_count"),
            success=error is None,
            error_message=error,
            metadata=as_plain_dict(metadata),
        )
        self._report_usage(result)
        return result

    def _report_unstored(self, result: ModelExecutionResult) -> None:
        """Tell the unstored observers of a finished run nobody stores."""
        for observer in self.unstored_observers:
            try:
                observer(result)
            except Exception:  # an observer's bug must not fail the run
                logger.exception("an unstored-run observer failed")

    def _report_usage(self, result: ModelExecutionResult) -> None:
        """Tell the usage observers and the context's sink what a finished run used."""
        usage = usage_of(result)
        sink = usage_sink.get()
        for observer in (*self.usage_observers, *([sink] if sink is not None else [])):
            try:
                observer(usage)
            except Exception:  # an observer's bug must not fail the run
                logger.exception("a usage observer failed")


def _thinking_refused(spec: RunSpec, payload: Mapping[str, Any], error: BackendError) -> bool:
    """Whether the backend refused the run only because its model cannot think, and the
    run may go on without `think` (`RequestPlan.relax_think`). Ollama answers 400
    `"<model>" does not support thinking`."""
    return (
        spec.plan.relax_think
        and payload.get("think") not in (None, False)
        and error.status == 400
        and "does not support thinking" in error.message
    )


def _without_think(spec: RunSpec, *bodies: Mapping[str, Any]) -> tuple[dict[str, Any], ...]:
    """`bodies` without `think`; the run's plan and metadata say it was dropped."""
    spec.plan.extra.pop("think", None)
    spec.metadata["think_relaxed"] = True
    return tuple({key: value for key, value in body.items() if key != "think"} for body in bodies)


def _surface(spec: RunSpec) -> str | None:
    surface = spec.metadata.get("surface")
    return str(surface) if surface else None
