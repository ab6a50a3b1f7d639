"""`OllamaManager`: models and single runs on one Ollama server (or a pool of them).

Every method has one async implementation (`alist_models`, `arun_model`, ...). The seed's
sync methods run that implementation on a private event loop in a daemon thread
(`LoopThread`), which works from a plain script and from inside a running event loop (a
notebook) alike; the REST layer awaits the async methods on its own loop. Backend clients
are per event loop (see `OllamaClient`), so both doors can be used at the same time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime
from functools import partial
from types import TracebackType
from typing import Any, Literal

from app.backends.client import OllamaClient
from app.backends.errors import BackendBusy, BackendError, BackendUnavailable
from app.backends.pool import BackendPool, BackendState
from app.loop_thread import LoopThread
from app.ollama._execution import (
    ChunkCallback,
    RunSpec,
    StreamAccumulator,
    ollama_metrics,
    require_model_name,
    require_prompt,
)
from app.ollama._store import ResultStore
from app.ollama.cli_mode import OllamaCli
from app.ollama.names import model_key, normalize_model_name, same_model
from app.ollama.options import plan_from_dict
from app.ollama.relay import Relayed, RunRecorder
from app.ollama.server_process import ServerProcess, is_local_url
from app.ollama.types import ModelExecutionResult, OllamaModel
from app.ollama.usage import UsageObserver, run_principal, usage_of, usage_sink
from app.settings import Settings

__all__ = ["OllamaManager", "ProgressCallback"]

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
"""Backends a run may be tried on before it fails (only while nothing was received)."""

ProgressCallback = Callable[[dict[str, Any]], None]


def model_from_tag(tag: Mapping[str, Any]) -> OllamaModel:
    """An `/api/tags` entry as an `OllamaModel` (id = first 12 hex of the digest, as the CLI)."""
    details = tag.get("details") or {}
    digest = str(tag.get("digest") or "")
    digest = digest.split(":", 1)[1] if digest.startswith("sha256:") else digest
    return OllamaModel(
        name=str(tag.get("name") or tag.get("model") or ""),
        id=digest[:12],
        size=int(tag.get("size") or 0),
        modified=str(tag.get("modified_at") or ""),
        parameters=details.get("parameter_size") or None,
        family=details.get("family") or None,
        format=details.get("format") or None,
    )


class OllamaManager:
    """Model management and execution against Ollama, over HTTP or the `ollama` binary.

    The first four parameters are the seed's. Keyword-only extras let the gateway pass
    its configuration: `backends` (several URLs) or a ready `pool`, `settings` (timeouts),
    `output_manager` (where `save_output=True` stores results; a default `OutputManager()`
    is created on the first save when none is given), `models_cache_ttl` (seconds
    `list_models` reuses its answer) and `server_start_timeout` (the `auto_start_server`
    deadline).

    Nothing touches the network in the constructor: `auto_start_server` checks the server
    on first use.
    """

    def __init__(
        self,
        ollama_binary: str = "ollama",
        auto_start_server: bool = True,
        base_url: str = "http://localhost:11434",
        use_http_api: bool = True,
        *,
        backends: list[str] | None = None,
        pool: BackendPool | None = None,
        settings: Settings | None = None,
        output_manager: ResultStore | None = None,
        models_cache_ttl: float = 5.0,
        server_start_timeout: float = 30.0,
    ) -> None:
        if pool is not None and backends is not None:
            raise ValueError("pass either backends or pool, not both")
        self.ollama_binary = ollama_binary
        self.auto_start_server = auto_start_server
        self.base_url = base_url.rstrip("/")
        self.use_http_api = use_http_api
        self.settings = settings if settings is not None else Settings()
        self.models_cache_ttl = models_cache_ttl
        self.server_start_timeout = server_start_timeout
        if pool is not None:
            self.pool, self._owns_pool = pool, False
        else:
            urls = backends if backends else [self.base_url]
            self.pool = BackendPool(
                urls,
                timeout=self.settings.request_timeout,
                connect_timeout=self.settings.connect_timeout,
                health_timeout=self.settings.health_timeout,
                transport=self.settings.http_transport,
            )
            self._owns_pool = True
        # Only a manager that talks to its own base_url may start a server for it.
        self._may_start_server = pool is None and not backends
        self._cli = None if use_http_api else OllamaCli(ollama_binary, self.pool.urls[0])
        self._output_manager = output_manager
        self._loop_thread = LoopThread(name="ollama-manager")
        self._lock = threading.Lock()
        self._models_cache: tuple[float, list[OllamaModel]] | None = None
        self._server: ServerProcess | None = None
        self._server_checked: concurrent.futures.Future[None] | None = None
        self.usage_observers: list[UsageObserver] = []
        """Called with the `RunUsage` of every finished run (metrics hang here)."""

    def __repr__(self) -> str:
        mode = "http" if self.use_http_api else "cli"
        return f"OllamaManager(backends={self.pool.urls!r}, mode={mode!r})"

    # -- lifecycle -------------------------------------------------------------------

    @property
    def started_server(self) -> bool:
        """True while an `ollama serve` started by this manager is running."""
        return self._server is not None and self._server.running

    def cleanup(self) -> None:
        """Close connections and stop the server if (and only if) this manager started it."""
        if self._loop_thread.started and not self._loop_thread.in_loop_thread():
            with contextlib.suppress(Exception):
                self._loop_thread.run(self._close_clients())
        self._stop_server()
        self._loop_thread.close()

    async def aclose(self) -> None:
        """Async `cleanup()`: also closes the clients of the calling event loop."""
        if self._loop_thread.started and not self._loop_thread.in_loop_thread():
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(self._loop_thread.submit(self._close_clients()))
        await self._close_clients()
        await asyncio.to_thread(self._stop_server)
        await asyncio.to_thread(self._loop_thread.close)

    async def _close_clients(self) -> None:
        if self._owns_pool:
            await self.pool.aclose()

    def _stop_server(self) -> None:
        with self._lock:
            # A manager used again after cleanup() checks (and may start) the server anew.
            self._server_checked = None
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def __enter__(self) -> OllamaManager:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    async def __aenter__(self) -> OllamaManager:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _ensure_server(self) -> None:
        """With `auto_start_server`, start `ollama serve` once if base_url is local and silent.

        The first caller (from any loop or thread) does the check; concurrent callers wait
        for its outcome. Failure to start is logged, not raised: the run that follows then
        fails with the backend's own "cannot connect" error.
        """
        if not (self.auto_start_server and self._may_start_server):
            return
        with self._lock:
            checked = self._server_checked
            owner = checked is None
            if checked is None:
                checked = self._server_checked = concurrent.futures.Future()
        if not owner:
            await asyncio.wrap_future(checked)
            return
        try:
            await self._start_server_if_needed()
        finally:
            checked.set_result(None)

    async def _start_server_if_needed(self) -> None:
        client = self.pool.clients[0]

        async def probe() -> bool:
            return await client.ping(timeout=self.settings.health_timeout)

        if await probe():
            return
        if not is_local_url(self.base_url):
            logger.warning(
                "%s does not answer and is not local: not starting a server", self.base_url
            )
            return
        server = ServerProcess(self.ollama_binary, self.base_url)
        try:
            server.start()
        except OSError as exc:
            logger.warning("cannot start %r serve: %s", self.ollama_binary, exc)
            return
        if await server.wait_ready(probe, self.server_start_timeout):
            self._server = server
            return
        logger.warning(
            "%s serve did not become ready within %ss:\n%s",
            self.ollama_binary,
            self.server_start_timeout,
            server.output_tail(),
        )
        await asyncio.to_thread(server.stop)

    # -- backends --------------------------------------------------------------------

    def check_backend(self, backend: str) -> None:
        """Raise ValueError unless `backend` is a configured backend's name or URL, or "all"."""
        self.pool.targets(backend)

    async def aadd_backend(self, backend: str) -> dict[str, Any]:
        """Add a backend at run time (`name=url;max=N;weight=W`); returns its status.

        ValueError for a bad spec or a name or URL already in use. Not persisted: the
        configured `GATEWAY_BACKENDS` is what a restart begins with.
        """
        state = self.pool.add(backend)
        self._models_cache = None
        await self.pool.refresh(state)
        return state.describe()

    async def aremove_backend(self, backend: str) -> None:
        """Take a backend (name or URL) out of the pool; requests in flight on it finish.

        ValueError when it is unknown or the last one.
        """
        state = self.pool.remove(backend)
        self._models_cache = None
        # Requests may run on any event loop (sync doors use a private one), so the
        # in-flight counter is polled rather than awaited; bounded by the request timeout.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.request_timeout):
                while state.outstanding:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        await state.client.aclose()

    async def amodel_locations(self, force_refresh: bool = False) -> dict[str, list[str]]:
        """Which backends (by name) have each model, keyed by the normalised model name.

        The pool's inventory is reused for `inventory_ttl` seconds unless `force_refresh`.
        """
        await self.pool.refresh_stale(force=force_refresh)
        where: dict[str, list[str]] = {}
        for state in self.pool.states:
            for name in state.models or []:
                where.setdefault(model_key(name), []).append(state.spec.name)
        return where

    async def abackend_status(self) -> list[dict[str, Any]]:
        """Each backend's health (`url`, `healthy`, `version`, `models`, `error`) and load
        (`name`, `circuit`, `outstanding`, `queued`, `max_concurrency`, `loaded`, ...).

        All backends are asked at once, each within `Settings.health_timeout`.
        """

        async def one(client: OllamaClient) -> dict[str, Any]:
            state = self.pool.state_of(client).describe()
            status: dict[str, Any] = {**state, "url": client.base_url, "healthy": False}
            try:
                async with asyncio.timeout(self.settings.health_timeout):
                    status["version"] = await client.version()
                    tags = await client.tags(timeout=self.settings.health_timeout)
            except (BackendError, TimeoutError) as exc:
                status["error"] = str(exc) or "timed out"
                return status
            status["healthy"] = True
            status["models"] = [str(t.get("name", "")) for t in tags]
            return status

        return list(await asyncio.gather(*(one(c) for c in self.pool.clients)))

    # -- models ----------------------------------------------------------------------

    def list_models(self, force_refresh: bool = False) -> list[OllamaModel]:
        """The installed models (cached for `models_cache_ttl` s; `force_refresh` skips it).

        Raises `BackendError` (e.g. `BackendUnavailable`) when no backend answers, so "no
        models" and "no server" are never confused.
        """
        return self._loop_thread.run(self.alist_models(force_refresh))

    async def alist_models(self, force_refresh: bool = False) -> list[OllamaModel]:
        cached = self._models_cache
        if (
            not force_refresh
            and cached is not None
            and time.monotonic() - cached[0] < self.models_cache_ttl
        ):
            return list(cached[1])
        await self._ensure_server()
        if self._cli is not None:
            models = await self._cli.list_models()
        else:
            models = await self._list_http_models()
        self._models_cache = (time.monotonic(), models)
        return list(models)

    async def _list_http_models(self) -> list[OllamaModel]:
        clients = self.pool.clients
        answers = await asyncio.gather(*(c.tags() for c in clients), return_exceptions=True)
        models: dict[str, OllamaModel] = {}
        errors: list[BackendError] = []
        for answer in answers:
            if isinstance(answer, BackendError):
                errors.append(answer)
            elif isinstance(answer, BaseException):
                raise answer
            else:
                for tag in answer:
                    model = model_from_tag(tag)
                    if model.name:
                        models.setdefault(model_key(model.name), model)
        if errors and len(errors) == len(clients):
            raise errors[0]
        return list(models.values())

    def is_model_available(self, model_name: str) -> bool:
        """True when a model of that name (by Ollama's rules: `x` == `x:latest`) is installed."""
        return self._loop_thread.run(self.ais_model_available(model_name))

    async def ais_model_available(self, model_name: str) -> bool:
        return await self.aget_model_by_name(model_name) is not None

    def get_model_by_name(self, model_name: str) -> OllamaModel | None:
        """The installed model of that name, or None."""
        return self._loop_thread.run(self.aget_model_by_name(model_name))

    async def aget_model_by_name(self, model_name: str) -> OllamaModel | None:
        wanted = model_key(require_model_name(model_name))
        for model in await self.alist_models():
            if model_key(model.name) == wanted:
                return model
        return None

    def get_model_stats(self) -> dict[str, Any]:
        """total_models, total_size (bytes), models (as dicts), families and backends."""
        return self._loop_thread.run(self.aget_model_stats())

    async def aget_model_stats(self) -> dict[str, Any]:
        models = await self.alist_models()
        families: dict[str, int] = {}
        for model in models:
            family = model.family or "unknown"
            families[family] = families.get(family, 0) + 1
        total_size = sum(model.size for model in models)
        return {
            "total_models": len(models),
            "total_size": total_size,
            "total_size_gb": round(total_size / 1e9, 3),
            "models": [model.to_dict() for model in models],
            "families": families,
            "backends": self.pool.urls,
        }

    def download_model(
        self, model_name: str, progress_callback: ProgressCallback | None = None
    ) -> bool:
        """Pull a model (`ollama pull`); True only when the pull reported success.

        Each progress object Ollama streams (`{"status", "digest", "total", "completed"}`)
        goes to `progress_callback` as it arrives (on the manager's loop thread). Failures
        (unknown model, registry or backend down) return False and log the reason; the
        callback then receives one last `{"error": "<reason>"}` object, as Ollama's own
        stream ends with one.
        """
        return self._loop_thread.run(self.adownload_model(model_name, progress_callback))

    async def adownload_model(
        self,
        model_name: str,
        progress_callback: ProgressCallback | None = None,
        *,
        backend: str | None = None,
    ) -> bool:
        """Async `download_model`. `backend` picks where: a backend's name or URL, `"all"`,
        or None for the least loaded healthy one. With several targets each progress
        object carries a `backend` key, and True means every pull succeeded."""
        model_name = require_model_name(model_name)
        targets = self.pool.targets(backend) if backend is not None else None
        try:
            await self._ensure_server()
            if self._cli is not None:
                await self._cli.pull(model_name, progress_callback)
            elif targets is None:
                client = (await self.pool.candidates(None))[0].client
                await self._pull_http(client, model_name, progress_callback)
            else:
                for state in targets:
                    tagged = _tag_progress(progress_callback, state.spec.name)
                    await self._pull_http(state.client, model_name, tagged)
        except BackendError as exc:
            logger.warning("pull of %s failed: %s", model_name, exc)
            if progress_callback is not None:
                progress_callback({"error": str(exc)})
            return False
        self._models_cache = None
        self.pool.mark_stale()
        return True

    async def _pull_http(
        self, client: OllamaClient, model_name: str, progress: ProgressCallback | None
    ) -> None:
        succeeded = False
        async with contextlib.aclosing(client.pull(model_name)) as lines:
            async for line in lines:
                if progress is not None:
                    progress(line)
                succeeded = line.get("status") == "success"
        if not succeeded:
            raise BackendError(
                f"pull of {model_name} ended without a success status", url=client.base_url
            )

    def delete_model(self, model_name: str) -> bool:
        """Remove a model (`ollama rm`); True if it was deleted, False if it was not there.

        Other backend failures raise `BackendError`.
        """
        return self._loop_thread.run(self.adelete_model(model_name))

    async def adelete_model(self, model_name: str, *, backend: str | None = None) -> bool:
        """Async `delete_model`: from every backend that has it, or from `backend` (a name
        or URL). True when it was deleted somewhere."""
        model_name = require_model_name(model_name)
        targets = self.pool.targets(backend if backend is not None else "all")
        await self._ensure_server()
        deleted = False
        try:
            if self._cli is not None:
                await self._cli.delete(model_name)
                return True
            for state in targets:
                try:
                    await state.client.delete(model_name)
                    deleted = True
                except BackendError as exc:
                    if exc.status != 404 and not (
                        backend is None and isinstance(exc, BackendUnavailable)
                    ):
                        raise
        except BackendError as exc:
            if exc.status == 404:
                return False
            raise
        finally:
            self._models_cache = None
            self.pool.mark_stale()
        return deleted

    # -- runs ------------------------------------------------------------------------

    def run_model(
        self,
        model_name: str,
        prompt: str,
        options: dict[str, Any] | None = None,
        save_output: bool = True,
        output_dir: str | None = None,
    ) -> ModelExecutionResult:
        """Generate a reply to `prompt`; never raises for a model's or backend's failure.

        `options` holds Ollama option names (`temperature`, `num_predict`, `stop`, ...)
        and/or `ExecutionOptions` names (`max_tokens`, `context_window`, `system_prompt`,
        `format`, `timeout`); a wrong type or unknown name raises `ValueError`. A failed run
        returns `success=False` with the backend's error text. With `save_output`, the
        result is stored through the output manager (its id lands in
        `metadata["result_id"]`).
        """
        spec = self.build_generate(model_name, prompt, options)
        return self._loop_thread.run(
            self.execute(
                spec, save_output=save_output, output_dir=output_dir, store_kind="generate"
            )
        )

    async def arun_model(
        self,
        model_name: str,
        prompt: str,
        options: dict[str, Any] | None = None,
        save_output: bool = True,
        output_dir: str | None = None,
    ) -> ModelExecutionResult:
        spec = self.build_generate(model_name, prompt, options)
        return await self.execute(
            spec, save_output=save_output, output_dir=output_dir, store_kind="generate"
        )

    def run_model_async(
        self, model_name: str, prompt: str, options: dict[str, Any] | None = None
    ) -> concurrent.futures.Future[ModelExecutionResult]:
        """`run_model` in the background: a `concurrent.futures.Future` of the result.

        Bad arguments raise `ValueError` here, not later from the future. The result is
        stored as `run_model` stores it.
        """
        spec = self.build_generate(model_name, prompt, options)
        return self._loop_thread.submit(self.execute(spec, store_kind="generate"))

    def build_generate(
        self, model_name: str, prompt: str, options: Mapping[str, Any] | None
    ) -> RunSpec:
        return RunSpec(
            kind="generate",
            model=require_model_name(model_name),
            prompt=require_prompt(prompt),
            plan=plan_from_dict(options),
        )

    # -- execution core (shared with ModelRunner) ------------------------------------

    def run_sync(self, coro: Any) -> Any:
        """Run a coroutine of this manager's core on its loop thread (used by ModelRunner)."""
        return self._loop_thread.run(coro)

    def submit(self, coro: Any) -> concurrent.futures.Future[Any]:
        return self._loop_thread.submit(coro)

    async def _pick(self, model_name: str | None) -> OllamaClient:
        return await self.pool.pick(model_name, has_model=same_model)

    async def execute(
        self,
        spec: RunSpec,
        *,
        on_chunk: ChunkCallback | None = None,
        deadline: float | None = None,
        save_output: bool = True,
        output_dir: str | None = None,
        store_kind: str = "generate",
        store_links: Mapping[str, str | None] | None = None,
    ) -> ModelExecutionResult:
        """Run `spec` to a `ModelExecutionResult`, streaming from the backend.

        The backend is always asked to stream: it gives time-to-first-token, keeps the
        partial text when a stream breaks, and a cancelled or timed-out run closes the
        connection so the backend stops generating. The overall deadline is `deadline`,
        else the options' timeout, else `Settings.request_timeout`. A cancelled run is
        stored as failed before the cancellation propagates. `on_chunk` receives every
        piece, then one closing `done` chunk whose `stats` describe the outcome.
        """
        acc = StreamAccumulator(on_chunk)
        deadline = deadline or spec.plan.timeout or self.settings.request_timeout
        mode = "cli" if self._cli is not None and spec.kind == "generate" else "http"
        backend: list[str] = []
        error: str | None = None
        error_type: str | None = None
        error_status: int | None = None
        cancelled: asyncio.CancelledError | None = None
        try:
            async with asyncio.timeout(deadline):
                await self._ensure_server()
                if mode == "cli":
                    await self._execute_cli(spec, acc, backend)
                else:
                    await self._execute_http(spec, acc, backend, deadline)
        except TimeoutError:
            error, error_type = f"timed out after {deadline:g}s", "BackendTimeout"
        except BackendError as exc:
            error, error_type, error_status = str(exc), type(exc).__name__, exc.status
        except asyncio.CancelledError as exc:
            cancelled = exc
            error, error_type = "cancelled before the run finished", "Cancelled"
        result = self._build_result(spec, acc, mode, backend, error, error_type, error_status)
        if cancelled is not None:
            if save_output:
                with contextlib.suppress(Exception):
                    await asyncio.shield(
                        self.store_result(
                            result, kind=store_kind, output_dir=output_dir, links=store_links
                        )
                    )
            raise cancelled
        if save_output:
            await self.store_result(
                result, kind=store_kind, output_dir=output_dir, links=store_links
            )
        acc.finish(result)
        return result

    async def _execute_http(
        self, spec: RunSpec, acc: StreamAccumulator, backend: list[str], deadline: float
    ) -> None:
        """Stream from the best backend; fail over to the next while nothing was received.

        A backend that fails before its first chunk (no connection, 5xx, timeout, full
        queue) is counted by the pool's circuit breaker and the next candidate is tried,
        at most `MAX_ATTEMPTS` in all. Once a chunk has arrived the run is that backend's:
        a failure then ends the run (its partial text is kept).
        """
        payload = spec.payload()
        candidates = await self.pool.candidates(spec.model, has_model=same_model)
        failed_over: list[str] = []
        for attempt, state in enumerate(candidates[:MAX_ATTEMPTS]):
            backend[:] = [state.client.base_url]
            received = False
            try:
                async with self.pool.lease(state):
                    client = state.client
                    if spec.kind == "generate":
                        stream = client.generate_stream(payload, timeout=deadline)
                    else:
                        stream = client.chat_stream(payload, timeout=deadline)
                    async with contextlib.aclosing(stream) as chunks:
                        async for chunk in chunks:
                            received = True
                            acc.feed_ollama_chunk(spec.kind, chunk)
            except BackendError as exc:
                backend_fault = exc.status is None or exc.status >= 500 or received
                if backend_fault and not isinstance(exc, BackendBusy):
                    self.pool.record_failure(state, exc)
                last = attempt == min(len(candidates), MAX_ATTEMPTS) - 1
                if received or last or not (backend_fault or isinstance(exc, BackendBusy)):
                    raise
                failed_over.append(f"{state.client.base_url}: {exc}")
                spec.metadata["failed_over_from"] = failed_over
                continue
            self.pool.record_success(state)
            return

    async def _execute_cli(self, spec: RunSpec, acc: StreamAccumulator, backend: list[str]) -> None:
        assert self._cli is not None
        backend.append(self._cli.base_url)
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
        run = await self._cli.run(
            spec.model, spec.prompt, json_format=spec.plan.format == "json", on_text=acc.feed
        )
        acc.final = {"done": True, **run.stats}

    def _build_result(
        self,
        spec: RunSpec,
        acc: StreamAccumulator,
        mode: str,
        backend: list[str],
        error: str | None,
        error_type: str | None,
        error_status: int | None,
    ) -> ModelExecutionResult:
        execution_time = time.perf_counter() - acc.started
        metadata: dict[str, Any] = {
            "kind": spec.kind,
            "mode": mode,
            "backend": backend[0] if backend else None,
            "request": spec.plan.describe(),
        }
        if spec.messages is not None:
            metadata["messages"] = spec.messages
        metadata.update(spec.metadata)
        principal = run_principal.get()
        if principal is not None:
            metadata.setdefault("principal", principal)
        metrics = ollama_metrics(acc.final)
        metadata.update(metrics)
        if acc.time_to_first_token is not None:
            metadata["time_to_first_token"] = acc.time_to_first_token
        metadata["chunks"] = len(acc.pieces)
        if acc.thinking:
            metadata["thinking"] = "".join(acc.thinking)
        if acc.tool_calls:
            metadata["tool_calls"] = acc.tool_calls
        tokens = metrics.get("eval_count")
        if error is not None:
            metadata["error_type"] = error_type
            if error_status is not None:
                metadata["error_status"] = error_status
            metadata["partial_response"] = acc.text
            result = ModelExecutionResult(
                model_name=spec.model,
                prompt=spec.prompt,
                response="",
                execution_time=execution_time,
                tokens_used=tokens,
                success=False,
                error_message=error,
                metadata=metadata,
            )
        else:
            result = ModelExecutionResult(
                model_name=spec.model,
                prompt=spec.prompt,
                response=acc.text,
                execution_time=execution_time,
                tokens_used=tokens,
                success=True,
                metadata=metadata,
            )
        self._report_usage(result)
        return result

    def _report_usage(self, result: ModelExecutionResult) -> None:
        """Tell the usage observers and the context's sink what a finished run used."""
        usage = usage_of(result)
        sink = usage_sink.get()
        for observer in (*self.usage_observers, *([sink] if sink is not None else [])):
            try:
                observer(usage)
            except Exception:  # an observer's bug must not fail the run
                logger.exception("a usage observer failed")

    # -- storage ---------------------------------------------------------------------

    @property
    def output_manager(self) -> ResultStore | None:
        """Where results are stored; the default `OutputManager()` is made on first use."""
        if self._output_manager is None:
            try:
                from app.ollama.outputs import OutputManager
            except ImportError as exc:  # storage not installed in this build
                logger.warning("results are not stored: %s", exc)
                return None
            self._output_manager = OutputManager()
        return self._output_manager

    async def store_result(
        self,
        result: ModelExecutionResult,
        *,
        kind: str,
        output_dir: str | None = None,
        links: Mapping[str, str | None] | None = None,
    ) -> str | None:
        """Store one result; a storage failure is logged and noted, never raised.

        The stored id goes to `metadata["result_id"]`. With `output_dir` the storage's
        sync `save_execution_result` is used (it writes an export there).
        """
        store = self.output_manager
        if store is None:
            return None
        if result.metadata is None:
            result.metadata = {}
        try:
            if output_dir is not None:
                result_id = await asyncio.to_thread(store.save_execution_result, result, output_dir)
            else:
                result_id = await store.arecord_execution(result, kind=kind, **dict(links or {}))
        except Exception as exc:
            logger.exception("storing a %s result failed", kind)
            result.metadata["storage_error"] = f"{type(exc).__name__}: {exc}"
            return None
        result.metadata["result_id"] = result_id
        return result_id

    async def aembed(
        self,
        model_name: str,
        inputs: str | list[str],
        *,
        dimensions: int | None = None,
        truncate: bool | None = None,
    ) -> dict[str, Any]:
        """Embeddings of `inputs` (`POST /api/embed` on a backend that has the model):
        Ollama's reply, `embeddings` and `prompt_eval_count` among its keys."""
        model_name = require_model_name(model_name)
        extra: dict[str, Any] = {}
        if dimensions is not None:
            extra["dimensions"] = dimensions
        if truncate is not None:
            extra["truncate"] = truncate
        await self._ensure_server()
        state = self.pool.state_of(await self._pick(model_name))
        async with self.pool.lease(state):
            try:
                reply = await state.client.embed(model_name, inputs, **extra)
            except BackendError as exc:
                if exc.status is None or exc.status >= 500:
                    self.pool.record_failure(state, exc)
                raise
        self.pool.record_success(state)
        return reply

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
    ) -> Relayed:
        """Forward one raw request to the backend that should serve `model`.

        The door for the Ollama-compatible `/api` surface: the reply comes back unparsed
        (status, headers, streamed body), so the wire format stays Ollama's own. Routing
        is the pool's; a backend that fails before answering (no connection, 5xx, full
        queue) is given up for the next, at most `MAX_ATTEMPTS` in all. A model no backend
        has goes to any healthy backend, which answers in Ollama's own words. With
        `record` (see `relay.spec_of_body`) a generate or chat reply is read on the side
        and the run stored as `store_kind`. Raises `BackendError` when no backend answers.
        """
        await self._ensure_server()
        try:
            candidates = await self.pool.candidates(model, has_model=same_model)
        except BackendError as exc:
            if exc.status != 404:
                raise
            candidates = await self.pool.candidates(None)
        attempts = candidates[:MAX_ATTEMPTS]
        for attempt, state in enumerate(attempts):
            last = attempt == len(attempts) - 1
            stack = contextlib.AsyncExitStack()
            try:
                await stack.enter_async_context(self.pool.lease(state))
                reply = await state.client.relay(method, path, content=content, headers=headers)
            except BackendError as exc:
                await stack.aclose()
                if not isinstance(exc, BackendBusy):
                    self.pool.record_failure(state, exc)
                if last:
                    raise
                continue
            stack.push_async_callback(reply.aclose)
            if reply.status >= 500 and not last:
                await stack.aclose()
                self.pool.record_failure(
                    state, BackendError(f"HTTP {reply.status}", status=reply.status)
                )
                continue
            if reply.status < 500:
                self.pool.record_success(state)
            body: AsyncIterator[bytes] = reply.body
            if record is not None and record.kind in ("generate", "chat"):
                recorder = RunRecorder(
                    record,
                    reply.status,
                    build=partial(self._build_result, mode="relay", backend=[state.spec.url]),
                    store=partial(self.store_result, kind=store_kind),
                )
                body = recorder.tee(body)
            return Relayed(
                status=reply.status,
                headers=reply.headers,
                body=_released(body, stack),
                backend=state.spec.name,
                _closers=[stack.aclose],
            )
        raise BackendUnavailable("no backend to relay to")  # unreachable: candidates is non-empty

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
        await self._ensure_server()
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
            self._models_cache = None
            self.pool.mark_stale()

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

    def mark_inventory_stale(self) -> None:
        """Forget cached model lists (after a pull, delete or copy that went around them)."""
        self._models_cache = None
        self.pool.mark_stale()

    @staticmethod
    def normalize_model_name(model_name: str) -> str:
        """`llama3.1` -> `llama3.1:latest` (see `app.ollama.names`)."""
        return normalize_model_name(model_name)


def _tag_progress(callback: ProgressCallback | None, backend: str) -> ProgressCallback | None:
    """A progress callback that names the backend in each object it passes on."""
    if callback is None:
        return None

    def tagged(line: dict[str, Any]) -> None:
        callback({**line, "backend": backend})

    return tagged


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
