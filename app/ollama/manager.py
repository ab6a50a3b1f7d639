"""`OllamaManager`: models and single runs on one Ollama server (or a pool of them).

Every method has one async implementation (`alist_models`, `arun_model`, ...). The seed's
sync methods run that implementation on a private event loop in a daemon thread
(`LoopThread`), which works from a plain script and from inside a running event loop (a
notebook) alike; the REST layer awaits the async methods on its own loop. Backend clients
are per event loop (see `OllamaClient`), so both doors can be used at the same time.

The manager is a facade over the seed's model and run doors: it owns the pool and
storage and composes the rest. `RunExecutor` (app.ollama.executor) runs and builds
results, `LocalOllama` (app.local) is the Ollama on this host (`auto_start_server`, CLI
mode), and app.ollama.models does the talking for model listing, pulls and deletes. What
the gateway adds around it is built beside it, not inside: the fleet's administration
(app.fleet), Ollama's API relayed (app.relay) and the jobs (app.jobs).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Coroutine, Mapping
from types import TracebackType
from typing import Any, TypeVar

from app.backends.errors import BackendError
from app.backends.pool import BackendPool
from app.local import LocalOllama
from app.loop_thread import LoopThread
from app.ollama._store import ResultStore, store_result
from app.ollama.executor import RunExecutor
from app.ollama.models import (
    ProgressCallback,
    delete_model,
    list_models,
    model_from_tag,
    model_stats,
    pull_model,
)
from app.ollama.names import model_key, same_model
from app.ollama.options import plan_from_dict
from app.ollama.outputs import OutputManager
from app.ollama.pool_setup import pool_options
from app.ollama.run_spec import generate_spec, require_model_name
from app.ollama.types import ModelExecutionResult, OllamaModel
from app.ollama.usage import UsageObserver, run_principal, run_team
from app.settings import Settings

__all__ = ["OllamaManager", "ProgressCallback"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class OllamaManager:
    """Model management and execution against Ollama, over HTTP or the `ollama` binary.

    The first four parameters are the seed's. Keyword-only extras let the gateway pass
    its configuration: `backends` (several URLs) or a ready `pool`, `settings` (timeouts),
    `output_manager` (where `save_output=True` stores results; a default `OutputManager()`
    is created on the first save when none is given), `models_cache_ttl` (seconds
    `list_models` reuses its answer) and `server_start_timeout` (the `auto_start_server`
    deadline). Nothing touches the network in the constructor: `auto_start_server` checks
    the server on first use.
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
            self.pool = BackendPool(urls, **pool_options(self.settings))
            self._owns_pool = True
        self._output_manager = output_manager
        self._loop_thread = LoopThread(name="ollama-manager")
        self._models_cache: tuple[float, list[OllamaModel]] | None = None
        # Only a manager that talks to its own base_url may start a server for it.
        self.local = LocalOllama(
            ollama_binary,
            self.pool.urls[0],
            probe=self._probe_base_url,
            may_start=auto_start_server and pool is None and not backends,
            cli=not use_http_api,
            start_timeout=server_start_timeout,
        )
        """The Ollama on this host: `auto_start_server` and CLI mode (see app.local)."""
        self._cli = self.local.cli
        self.executor = RunExecutor(
            self.pool,
            self.settings,
            cli=self._cli,
            ensure_server=self.local.ensure_server,
            store=self.store_result,
        )
        """Runs `RunSpec`s to results (shared with `ModelRunner`, the relay and the jobs)."""

    def __repr__(self) -> str:
        mode = "http" if self.use_http_api else "cli"
        return f"OllamaManager(backends={self.pool.urls!r}, mode={mode!r})"

    @property
    def usage_observers(self) -> list[UsageObserver]:
        """Called with the `RunUsage` of every finished run (metrics hang here)."""
        return self.executor.usage_observers

    @usage_observers.setter
    def usage_observers(self, observers: list[UsageObserver]) -> None:
        self.executor.usage_observers = observers

    # -- lifecycle -------------------------------------------------------------------

    @property
    def started_server(self) -> bool:
        """True while an `ollama serve` started by this manager is running."""
        return self.local.started_server

    def cleanup(self) -> None:
        """Close connections and stop the server if (and only if) this manager started it."""
        if self._loop_thread.started and not self._loop_thread.in_loop_thread():
            with contextlib.suppress(Exception):
                self._loop_thread.run(self._close_clients())
        self.local.stop()
        self._loop_thread.close()

    async def aclose(self) -> None:
        """Async `cleanup()`: also closes the clients of the calling event loop."""
        if self._loop_thread.started and not self._loop_thread.in_loop_thread():
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(self._loop_thread.submit(self._close_clients()))
        await self._close_clients()
        await asyncio.to_thread(self.local.stop)
        await asyncio.to_thread(self._loop_thread.close)

    async def _close_clients(self) -> None:
        if self._owns_pool:
            await self.pool.aclose()

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
        """With `auto_start_server`, start `ollama serve` once if base_url is local and silent
        (see `LocalOllama.ensure_server`; a manager used again after cleanup() checks anew)."""
        await self.local.ensure_server()

    async def _probe_base_url(self) -> bool:
        return await self.pool.clients[0].ping(timeout=self.settings.health_timeout)

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
            models = [model_from_tag(entry) for entry in await self._cli.list_models()]
        else:
            models = await list_models(self.pool.clients)
        self._models_cache = (time.monotonic(), models)
        return list(models)

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
        return model_stats(await self.alist_models(), self.pool.urls)

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
            else:
                await pull_model(self.pool, model_name, progress_callback, targets)
        except BackendError as exc:
            logger.warning("pull of %s failed: %s", model_name, exc)
            if progress_callback is not None:
                progress_callback({"error": str(exc)})
            return False
        self.mark_inventory_stale()
        return True

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
        try:
            if self._cli is not None:
                await self._cli.delete(model_name)
                return True
            return await delete_model(targets, model_name, skip_unavailable=backend is None)
        except BackendError as exc:
            if exc.status == 404:
                return False
            raise
        finally:
            self.mark_inventory_stale()

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
        spec = generate_spec(model_name, prompt, plan_from_dict(options))
        return self._loop_thread.run(
            self.executor.execute(
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
        spec = generate_spec(model_name, prompt, plan_from_dict(options))
        return await self.executor.execute(
            spec, save_output=save_output, output_dir=output_dir, store_kind="generate"
        )

    def run_model_async(
        self, model_name: str, prompt: str, options: dict[str, Any] | None = None
    ) -> concurrent.futures.Future[ModelExecutionResult]:
        """`run_model` in the background: a `concurrent.futures.Future` of the result.

        Bad arguments raise `ValueError` here, not later from the future. The result is
        stored as `run_model` stores it.
        """
        spec = generate_spec(model_name, prompt, plan_from_dict(options))
        return self._loop_thread.submit(self.executor.execute(spec, store_kind="generate"))

    def run_sync(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine of this manager's core on its loop thread (used by ModelRunner)."""
        return self._loop_thread.run(coro)

    async def aembed(
        self,
        model_name: str,
        inputs: str | list[str],
        *,
        dimensions: int | None = None,
        truncate: bool | None = None,
        surface: str = "gateway",
    ) -> dict[str, Any]:
        """Embeddings of `inputs` (`POST /api/embed` on a backend that has the model):
        Ollama's reply, `embeddings` and `prompt_eval_count` among its keys.

        Not stored; what it used is reported like a run's (`kind` embed, the usage
        observers, and the usage ledger through the executor's unstored observers)."""
        model_name = require_model_name(model_name)
        extra: dict[str, Any] = {}
        if dimensions is not None:
            extra["dimensions"] = dimensions
        if truncate is not None:
            extra["truncate"] = truncate
        started = time.perf_counter()
        await self._ensure_server()
        state = self.pool.state_of(await self.pool.pick(model_name, has_model=same_model))
        async with self.pool.lease(state, model_name):
            try:
                reply = await state.client.embed(model_name, inputs, **extra)
            except BackendError as exc:
                if exc.status is None or exc.status >= 500:
                    self.pool.record_failure(state, exc)
                raise
        self.pool.record_success(state)
        self._report_embedding(model_name, reply, state.spec.url, surface, started)
        return reply

    def _report_embedding(
        self, model: str, reply: dict[str, Any], backend: str, surface: str, started: float
    ) -> None:
        metadata: dict[str, Any] = {"kind": "embed", "surface": surface, "backend": backend}
        metadata.update({k: reply[k] for k in ("total_duration", "load_duration") if k in reply})
        metadata["prompt_eval_count"] = reply.get("prompt_eval_count") or 0
        principal, team = run_principal.get(), run_team.get()
        if principal is not None:
            metadata["principal"] = principal
        if team is not None:
            metadata["team"] = team
        result = ModelExecutionResult(
            model_name=model,
            prompt="",
            response="",
            execution_time=time.perf_counter() - started,
            tokens_used=0,
            success=True,
            metadata=metadata,
        )
        self.executor._report_usage(result)
        self.executor._report_unstored(result)

    # -- storage ---------------------------------------------------------------------

    @property
    def output_manager(self) -> ResultStore:
        """Where results are stored; the default `OutputManager()` is made on first use."""
        if self._output_manager is None:
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
        return await store_result(
            self.output_manager, result, kind=kind, output_dir=output_dir, links=links
        )

    def mark_inventory_stale(self) -> None:
        """Forget cached model lists (after a pull, delete or copy that went around them)."""
        self._models_cache = None
        self.pool.mark_stale()
