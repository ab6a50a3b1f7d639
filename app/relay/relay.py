"""Relaying Ollama's own API through the pool, unparsed, while keeping a record of runs.

The `/api` surface must look exactly like Ollama: the backend's status, headers and bytes
go to the client as they come (NDJSON line by line, nothing buffered past a line end).
For `/api/generate` and `/api/chat` the lines are also read on the side, so the run is
stored like any other: when the final `done` line arrives it is stored before that line is
passed on (a client that has read the whole reply can find the stored run), and a reply
cut short by the backend or left by the client is stored as failed or cancelled with
its partial text.

`Relay` decides which backend a raw request goes to (with failover before the reply
starts), sends requests to every backend holding a model, and merges listings across
backends. The lifespan builds one beside the core's `OllamaManager`, on its executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, cast

import orjson

from app.backends.client import JSONDict
from app.backends.errors import BackendBusy, BackendError, BackendUnavailable
from app.backends.pool import BackendState
from app.backends.prefix import Prompt
from app.observability import telemetry
from app.ollama import tracing
from app.ollama.executor import MAX_ATTEMPTS, RunExecutor
from app.ollama.metadata import ErrorKind, RunMetadata, Surface, as_plain_dict, error_kind
from app.ollama.names import model_key, same_model
from app.ollama.options import RequestPlan
from app.ollama.run_spec import Kind, RunSpec, StreamAccumulator
from app.ollama.types import ModelExecutionResult
from app.ollama.usage import run_principal, run_team
from app.relay.resume import RelayResume

if TYPE_CHECKING:
    from opentelemetry.trace import Span

__all__ = ["Relay", "Relayed", "RunRecorder", "spec_of_body"]

#: Paths whose requests are runs of their model (counted against a backend's
#: `max_per_model`).
_MODEL_RUNS = frozenset({"/api/generate", "/api/chat", "/api/embed", "/v1/audio/speech"})
#: Request fields of `/api/generate` and `/api/chat` that are neither the input nor options.
_PLAN_FIELDS = ("format", "keep_alive", "think", "tools", "raw", "suffix", "template")


@dataclass
class Relayed:
    """A backend's reply on its way to the client; `body` must be consumed or closed."""

    status: int
    headers: dict[str, str]
    body: AsyncIterator[bytes]
    backend: str | None = None
    backend_url: str | None = None
    failed_over_from: list[str] = field(default_factory=list)
    """Backends that failed before this one answered (`url: error`)."""
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def aclose(self) -> None:
        """Release the backend connection and slot without reading the rest."""
        aclose = getattr(self.body, "aclose", None)
        if aclose is not None:
            await aclose()
        for closer in reversed(self._closers):
            await closer()
        self._closers.clear()

    async def read(self, limit: int = 64 << 20) -> bytes:
        """The whole body (for small replies: tags, show, errors)."""
        parts: list[bytes] = []
        size = 0
        try:
            async for piece in self.body:
                parts.append(piece)
                size += len(piece)
                if size > limit:
                    raise BackendError(f"backend reply over {limit} bytes", status=502)
        finally:
            await self.aclose()
        return b"".join(parts)


def spec_of_body(kind: Kind, body: dict[str, Any], surface: Surface) -> RunSpec | None:
    """What a raw generate/chat body asks for, as a `RunSpec` for the stored record.

    Nothing is validated (the backend answers for the body as sent); None when there is
    no model name to file the run under.
    """
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return None
    options = body.get("options")
    plan = RequestPlan(
        options=dict(options) if isinstance(options, dict) else {},
        system=body.get("system") if isinstance(body.get("system"), str) else None,
        format=body.get("format") if isinstance(body.get("format"), str | dict) else None,
        keep_alive=body.get("keep_alive"),
        stream=body.get("stream") is not False,
    )
    metadata: RunMetadata = {"surface": surface}
    extra = {k: body[k] for k in _PLAN_FIELDS if k in body and k not in ("format", "keep_alive")}
    if extra:
        metadata["request_extra"] = extra
    messages: list[dict[str, Any]] | None = None
    if kind == "generate":
        prompt = body.get("prompt") if isinstance(body.get("prompt"), str) else ""
    else:
        raw = body.get("messages")
        messages = [m for m in raw if isinstance(m, dict)] if isinstance(raw, list) else []
        prompt = next(
            (
                str(m.get("content") or "")
                for m in reversed(messages)
                if str(m.get("role", "")).lower() == "user"
            ),
            "",
        )
    return RunSpec(
        kind=kind, model=model, prompt=str(prompt), plan=plan, messages=messages, metadata=metadata
    )


BuildResult = Callable[..., ModelExecutionResult]
"""Called as `build(spec=, acc=, error=, error_type=, error_status=)`."""
StoreResult = Callable[[ModelExecutionResult], Awaitable[object]]


class RunRecorder:
    """Reads a relayed generate/chat reply on the side and stores the run once."""

    def __init__(
        self,
        spec: RunSpec,
        status: int,
        build: BuildResult,
        store: StoreResult,
        span: Span | None = None,
    ) -> None:
        self.spec = spec
        self.span = span
        """The run's span (`app.ollama.tracing`), ended when the run is stored."""
        self.status = status
        self.acc = StreamAccumulator()
        self.build = build
        self.store = store
        self.stored = False
        self.error: str | None = None
        self.resumer: RelayResume | None = None
        """Set for a streamed reply: continues it elsewhere when its backend fails."""

    def feed(self, line: bytes) -> bool:
        """Take one line (or the whole non-streamed reply); True when it ends the run."""
        chunk = _json_object(line)
        if chunk is None:
            return False
        if "error" in chunk:
            self.error = str(chunk["error"])
            return True
        self.acc.feed_ollama_chunk(self.spec.kind, chunk)
        if self.resumer is not None:
            self.resumer.resume.observe()
        return chunk.get("done") is True

    async def finish(
        self, error: str | None = None, error_type: ErrorKind | None = None
    ) -> ModelExecutionResult | None:
        if self.stored:
            return None
        self.stored = True
        error = error or self.error
        if error is None and self.status >= 400:
            error = f"HTTP {self.status}"
        if error is None and self.acc.final is None:
            error, error_type = (
                "the backend's reply ended before its final line",
                "StreamInterrupted",
            )
        if error is not None and error_type is None:
            error_type = "BackendError"
        status = self.status if self.status >= 400 else None
        result = self.build(
            spec=self.spec, acc=self.acc, error=error, error_type=error_type, error_status=status
        )
        tracing.finish_run_span(self.span, self.spec, self.acc, result)
        with telemetry.span("gateway.storage.save", {"gateway.storage.kind": "relay"}):
            await asyncio.shield(self.store(result))
        return result

    async def tee(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Pass `body` on by whole lines (those that came in one read together), storing the
        run at its end (see the module doc)."""
        try:
            async with contextlib.aclosing(self._lines(body)) as lines:
                async for line in lines:
                    yield line
        except (asyncio.CancelledError, GeneratorExit):
            with contextlib.suppress(Exception):
                await self.finish("the client left before the run finished", "Cancelled")
            raise

    async def _lines(self, body: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
        """`body`'s lines; when its backend fails, the continuation's (`resumer`), else an
        error line."""
        buffer = b""
        try:
            async for piece in body:
                buffer += piece
                if b"\n" not in piece:
                    continue
                *complete, buffer = buffer.split(b"\n")
                # The lines that came in one read go out in one write: one `send` down the
                # ASGI stack and one socket write for a backend that is ahead of us.
                ready: list[bytes] = []
                for text in complete:
                    line = text + b"\n"
                    try:
                        final = self.feed(line)
                        if final:
                            self._raise_resumable_error()
                    except BackendError:
                        if ready:
                            yield b"".join(ready)
                        raise
                    if final:  # what came before goes out before the run is stored
                        if ready:
                            yield b"".join(ready)
                            ready = []
                        await self.finish()
                    ready.append(line)
                if ready:
                    yield b"".join(ready)
            if buffer:
                if self.feed(buffer):
                    self._raise_resumable_error()
                    await self.finish()
                yield buffer
            await self.finish()
            return
        except BackendError as exc:
            failure = exc
        aclose = getattr(body, "aclose", None)
        if aclose is not None:  # the failed reply is not read on
            with contextlib.suppress(Exception):
                await aclose()
        if self.resumer is not None:
            try:
                async with contextlib.aclosing(self.resumer.lines(failure)) as more:
                    async for line, final in more:
                        if final:
                            await self.finish()
                        yield line
                await self.finish()
                return
            except BackendError as exc:
                failure = exc
        await self.finish(str(failure), error_kind(failure))
        yield json.dumps({"error": str(failure)}).encode() + b"\n"

    def _raise_resumable_error(self) -> None:
        """An error line after part of the answer is the backend failing mid-stream: raised
        (not passed on) when the run may continue elsewhere."""
        if self.error is not None and self.resumer is not None and self.acc.fed > 0:
            error, self.error = self.error, None
            raise BackendError(error, status=200)


def _json_object(content: bytes | None) -> dict[str, Any] | None:
    """A request body or a reply line as the JSON object it is, or None.

    orjson reads each line in a quarter of `json`'s time; what it refuses and `json` takes
    (NaN, integers past 64 bits, lone surrogates) is read by `json`, so a line means what
    it meant before."""
    if not content:
        return None
    try:
        value = orjson.loads(content)
    except orjson.JSONDecodeError:
        try:
            value = json.loads(content)
        except (ValueError, RecursionError):
            return None
    return value if isinstance(value, dict) else None


async def _one_piece(content: bytes) -> AsyncIterator[bytes]:
    yield content


@dataclass(frozen=True, slots=True)
class _Relaying:
    """One request `Relay.arelay` relays, as its caller gave it."""

    method: str
    path: str
    model: str | None
    content: bytes | None
    headers: Mapping[str, str] | None
    record: RunSpec | None
    store_kind: str
    buffered: bool
    body: Mapping[str, Any] | None
    session: str | None


class Relay:
    """Raw requests through the pool of `executor`, for the Ollama-compatible `/api` surface.

    The executor's server check runs before a request is relayed, and relayed runs are
    built and stored as the executor's own; `forget_inventory` is called after a request
    sent to every holder of a model (a delete, a copy) changed what the backends hold.
    """

    def __init__(self, executor: RunExecutor, *, forget_inventory: Callable[[], None]) -> None:
        self.executor = executor
        self.pool = executor.pool
        self.settings = executor.settings
        self.forget_inventory = forget_inventory

    async def arelay(
        self,
        method: str,
        path: str,
        *,
        model: str | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        record: RunSpec | None = None,
        store_kind: str = "generate",
        buffered: bool = False,
        body: Mapping[str, Any] | None = None,
        session: str | None = None,
    ) -> Relayed:
        """Forward one raw request to the backend that should serve `model`.

        The door for the Ollama-compatible `/api` surface: the reply comes back unparsed
        (status, headers, streamed body), so the wire format stays Ollama's own. Routing
        is the pool's; a backend that fails before answering (no connection, 5xx, full
        queue) is given up for the next, at most `MAX_ATTEMPTS` in all. A model no backend
        has goes to any healthy backend, which answers in Ollama's own words. With
        `record` (see `spec_of_body`) a generate or chat reply is read on the side and the
        run stored as `store_kind`. `buffered` (a client that waits for the whole reply): a
        reply cut short is retried on the next backend too. Raises `BackendError` when no
        backend answers. `body` is `content` as the caller parsed it (a generate's or chat's
        prompt then ranks the backends by expected time to first token, see
        `BackendPool.candidates`), `session` the client's name for its conversation.
        """
        await self.executor.ensure_server()
        run_span = None
        if record is not None and record.kind in ("generate", "chat"):
            run_span = tracing.start_run_span(record, surface="ollama")
        request = _Relaying(
            method, path, model, content, headers, record, store_kind, buffered, body, session
        )
        try:
            return await self._arelay(request, run_span)
        except BaseException as exc:
            telemetry.end_span(run_span, exc)
            raise

    async def _arelay(self, request: _Relaying, run_span: Span | None) -> Relayed:
        model = request.model
        prompt = self._prompt(request)
        choice = tracing.choice_span(model) if run_span is not None else None
        with telemetry.ending(choice):
            with telemetry.use_span(run_span), telemetry.use_span(choice):
                try:
                    candidates = await self.pool.candidates(
                        model, has_model=same_model, prompt=prompt
                    )
                except BackendError as exc:
                    if exc.status != 404:
                        raise
                    candidates = await self.pool.candidates(None, placed=model)
            tracing.candidates_ranked(choice, candidates)
            return await self._relay_attempts(request, candidates, prompt, (run_span, choice))

    def _prompt(self, request: _Relaying) -> Prompt | None:
        """A generate's or chat's prompt as the prefix index sees it (None: another path, a
        body that is not one, or the index off)."""
        body, model = request.body, request.model
        if body is None or model is None:
            return None
        if request.path == "/api/chat":
            messages = body.get("messages")
            if not isinstance(messages, list):
                return None
            return self.pool.chat_prompt(
                model,
                [m for m in messages if isinstance(m, dict)],
                tools=body.get("tools"),
                session=request.session,
            )
        if request.path == "/api/generate":
            prompt, system, context = body.get("prompt"), body.get("system"), body.get("context")
            if not isinstance(prompt, str) or not prompt:
                return None
            return self.pool.generate_prompt(
                model,
                prompt,
                system=system if isinstance(system, str) else None,
                context=context if isinstance(context, list) else None,
                raw=body.get("raw") is True,
                session=request.session,
            )
        return None

    async def _relay_attempts(
        self,
        request: _Relaying,
        candidates: list[BackendState],
        prompt: Prompt | None,
        spans: tuple[Span | None, Span | None],
    ) -> Relayed:
        run_span, choice = spans
        method, path, model, content = request.method, request.path, request.model, request.content
        headers, record, buffered = request.headers, request.record, request.buffered
        attempts = candidates[:MAX_ATTEMPTS]
        runs = model if path in _MODEL_RUNS else None
        failed_over: list[str] = []
        for attempt, state in enumerate(attempts):
            last = attempt == len(attempts) - 1
            stack = contextlib.AsyncExitStack()
            try:
                asked_at = time.perf_counter()
                await stack.enter_async_context(self.pool.lease(state, runs, prompt=prompt))
                tracing.backend_chosen(choice, run_span, state, asked_at, attempt, prompt)
                with telemetry.use_span(run_span):  # the HTTP span (and traceparent) under it
                    reply = await state.client.relay(method, path, content=content, headers=headers)
            except BackendError as exc:
                await stack.aclose()
                if not isinstance(exc, BackendBusy):
                    self.pool.record_failure(state, exc)
                if last:
                    raise
                tracing.failover(run_span, state, exc)
                failed_over.append(f"{state.spec.url}: {exc}")
                continue
            stack.push_async_callback(reply.aclose)
            if reply.status >= 500 and not last:
                await stack.aclose()
                failure = BackendError(f"HTTP {reply.status}", status=reply.status)
                self.pool.record_failure(state, failure)
                tracing.failover(run_span, state, failure)
                failed_over.append(f"{state.spec.url}: {failure}")
                continue
            body: AsyncIterator[bytes] = reply.body
            if runs is not None and path != "/api/embed" and reply.status == 200:
                # what the backend says at the end: load and prompt times, what it cached
                body = _observing(body, partial(self._ended, prompt, state, runs))
            if buffered:  # the client waits for the whole reply: one cut short is retried
                try:
                    whole = await Relayed(reply.status, reply.headers, body).read()
                except BackendError as exc:
                    await stack.aclose()
                    self.pool.record_failure(state, exc)
                    if last:
                        raise
                    tracing.failover(run_span, state, exc)
                    failed_over.append(f"{state.spec.url}: {exc}")
                    continue
                body = _one_piece(whole)
            if reply.status < 500:
                self.pool.record_success(state)
            if record is not None and record.kind in ("generate", "chat"):
                served_by = [state.spec.url]
                recorder = RunRecorder(
                    record,
                    reply.status,
                    build=partial(self.executor.build_result, mode="relay", backend=served_by),
                    store=partial(self.executor.store, kind=request.store_kind),
                    span=run_span,
                )
                asked = _json_object(content)
                if not buffered and reply.status == 200 and asked is not None:
                    recorder.resumer = RelayResume(
                        self.pool,
                        record,
                        recorder.acc,
                        asked,
                        first=state,
                        release_first=stack.aclose,
                        others=attempts[attempt + 1 :],
                        backend=served_by,
                        timeout=self.settings.request_timeout,
                    )
                body = recorder.tee(body)
            else:
                telemetry.end_span(run_span)
            return Relayed(
                status=reply.status,
                headers=reply.headers,
                body=_released(body, stack),
                backend=state.spec.name,
                backend_url=state.spec.url,
                failed_over_from=failed_over,
                _closers=[stack.aclose],
            )
        raise BackendUnavailable("no backend to relay to")  # unreachable: candidates is non-empty

    def _ended(
        self, prompt: Prompt | None, state: BackendState, model: str, reply: str, final: JSONDict
    ) -> None:
        """A relayed generate or chat ended well on `state` with `final` (see `_observing`)."""
        self.pool.observed(state, model, final)
        self.pool.served(prompt, state, reply=reply, final=final)

    async def arecord_exchange(
        self,
        *,
        kind: str,
        surface: Surface,
        model: str,
        prompt: str,
        relayed: Relayed | None,
        execution_time: float,
        error: str | None = None,
        error_type: ErrorKind | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> ModelExecutionResult:
        """Store a relayed exchange that is not a generation (a speech synthesis: text in,
        audio out) as a run of `kind`: its input as the prompt, no answer text, what came
        back described in `details`. Failed when `error` is given or the backend answered
        an error status. Stored although its caller may be gone (shielded)."""
        status = relayed.status if relayed is not None else None
        if error is None and status is not None and status >= 400:
            error = f"HTTP {status}"
        metadata: RunMetadata = {
            "kind": kind,
            "surface": surface,
            "mode": "relay",
            "backend": relayed.backend_url if relayed is not None else None,
        }
        if relayed is not None and relayed.failed_over_from:
            metadata["failed_over_from"] = list(relayed.failed_over_from)
        metadata.update(cast(RunMetadata, dict(details or {})))
        principal = run_principal.get()
        if principal is not None:
            metadata["principal"] = principal
        team = run_team.get()
        if team is not None:
            metadata["team"] = team
        if error is not None:
            metadata["error_type"] = error_type or "BackendError"
            if status is not None and status >= 400:
                metadata["error_status"] = status
        result = ModelExecutionResult(
            model_name=model,
            prompt=prompt,
            response="",
            execution_time=execution_time,
            tokens_used=None,
            success=error is None,
            error_message=error,
            metadata=as_plain_dict(metadata),
        )
        with telemetry.span("gateway.storage.save", {"gateway.storage.kind": kind}):
            await asyncio.shield(self.executor.store(result, kind=kind))
        return result

    async def arelay_each(
        self,
        method: str,
        path: str,
        *,
        model: str,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> list[tuple[str, int, dict[str, str], bytes]]:
        """Send one request to every backend that has `model` (a delete, a copy).

        Returns `(backend, status, headers, body)` per backend. When none has the model,
        the request goes to one backend, whose own error is returned.
        """
        await self.executor.ensure_server()
        await self.pool.refresh_stale(force=True)
        holders = [
            s
            for s in self.pool.states
            if s.available and any(same_model(m, model) for m in s.models or [])
        ]
        if not holders:
            holders = (await self.pool.candidates(None))[:1]

        async def one(state: BackendState) -> tuple[str, int, dict[str, str], bytes]:
            async with self.pool.lease(state):
                reply = await state.client.relay(method, path, content=content, headers=headers)
                relayed = Relayed(reply.status, reply.headers, reply.body, state.spec.name)
                return state.spec.name, reply.status, reply.headers, await relayed.read()

        try:
            return list(await asyncio.gather(*(one(s) for s in holders)))
        finally:
            self.forget_inventory()

    async def aunion(self, listing: Literal["tags", "ps"]) -> list[dict[str, Any]]:
        """`/api/tags` or `/api/ps` of every backend, merged by model name (first wins);
        tags newest first by `modified_at`, as Ollama lists them.

        Backends that do not answer within `Settings.health_timeout` are left out;
        `BackendError` when none answers.
        """
        states = self.pool.states

        async def one(state: BackendState) -> list[dict[str, Any]]:
            async with asyncio.timeout(self.settings.health_timeout):
                if listing == "tags":
                    return await state.client.tags(timeout=self.settings.health_timeout)
                return await state.client.ps()

        answers = await asyncio.gather(*(one(s) for s in states), return_exceptions=True)
        merged: dict[str, dict[str, Any]] = {}
        errors: list[str] = []
        for state, answer in zip(states, answers, strict=True):
            if isinstance(answer, BaseException):
                if not isinstance(answer, BackendError | TimeoutError):
                    raise answer
                errors.append(f"{state.spec.name}: {answer or 'timed out'}")
                continue
            for entry in answer:
                merged.setdefault(model_key(str(entry.get("name") or entry.get("model"))), entry)
        if errors and len(errors) == len(states):
            raise BackendUnavailable("no backend answered: " + "; ".join(errors))
        entries = list(merged.values())
        if listing == "tags" and len(states) > 1:
            entries.sort(key=lambda e: _timestamp(e.get("modified_at")), reverse=True)
        return entries


async def _observing(
    body: AsyncIterator[bytes], ended: Callable[[str, JSONDict], None]
) -> AsyncIterator[bytes]:
    """`body` (a generate's or chat's reply, NDJSON or one object) as it is; `ended(reply,
    final)` gets the answer's text and its final object once that has passed (not for a
    reply that fails or is cut short)."""
    buffer = b""
    parts: list[str] = []
    finished = False
    try:
        async for piece in body:
            yield piece
            if finished:
                continue
            buffer += piece
            while not finished and (cut := buffer.find(b"\n")) >= 0:
                line, buffer = buffer[:cut], buffer[cut + 1 :]
                finished = _answer_line(line, parts, ended)
        if not finished and buffer.strip():
            _answer_line(buffer, parts, ended)
    finally:
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            await aclose()


def _answer_line(line: bytes, parts: list[str], ended: Callable[[str, JSONDict], None]) -> bool:
    """Take one line of a generate's or chat's reply; True once the reply ended (well or
    not)."""
    chunk = _json_object(line)
    if chunk is None:
        return False
    if "error" in chunk:
        return True
    message = chunk.get("message")
    if isinstance(message, dict) and isinstance(message.get("content"), str):
        parts.append(message["content"])
    elif isinstance(chunk.get("response"), str):
        parts.append(chunk["response"])
    if chunk.get("done") is True:
        ended("".join(parts), chunk)
        return True
    return False


async def _released(
    body: AsyncIterator[bytes], stack: contextlib.AsyncExitStack
) -> AsyncIterator[bytes]:
    """`body`, then the backend's connection and request slot given back."""
    try:
        async for piece in body:
            yield piece
    finally:
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            await aclose()
        await stack.aclose()


def _timestamp(value: Any) -> float:
    """Seconds since the epoch of an RFC 3339 time as Go writes it (0 when unreadable)."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", str(value or "")).replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0
