"""`OllamaManager`: models and single runs on one Ollama server (or a pool of them).

Every method has one async implementation (`alist_models`, `arun_model`, ...). The seed's
sync methods run that implementation on a private event loop in a daemon thread
(`LoopThread`), which works from a plain script and from inside a running event loop (a
notebook) alike; the REST layer awaits the async methods on its own loop. Backend clients
are per event loop (see `OllamaClient`), so both doors can be used at the same time.

The manager owns the pool, the server check and storage, and holds here what decides
where and when: server lifecycle, backend admin, model listing, pulls and deletes,
embeddings. It composes the rest: `RunExecutor` (app.ollama.executor) runs and builds
results, `Relay` (app.ollama.relay) serves the raw `/api` doors, `ServerAutoStart`
(app.ollama.autostart) starts `ollama serve`, and app.ollama.admin does the talking for
model listing, backend admin, pulls and deletes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Coroutine, Mapping
from types import TracebackType
from typing import Any, Literal, TypeVar

from app.backends.errors import BackendError
from app.backends.load_history import LoadSample
from app.backends.pool import BackendPool, BackendState, Reconciled
from app.loop_thread import LoopThread
from app.ollama._execution import RunSpec, generate_spec, require_model_name
from app.ollama._store import ResultStore, store_result
from app.ollama.admin import (
    BackendLoad,
    ProgressCallback,
    api_backend_spec,
    backend_loads,
    backend_status,
    delete_model,
    list_models,
    model_locations,
    model_stats,
    pool_options,
    pull_model,
    retire_backend,
)
from app.ollama.autostart import ServerAutoStart
from app.ollama.backend_registry import BackendRegistry, Member
from app.ollama.cli_mode import OllamaCli
from app.ollama.executor import RunExecutor
from app.ollama.names import model_key, same_model
from app.ollama.options import plan_from_dict
from app.ollama.outputs import OutputManager
from app.ollama.placement_admin import PlacementAdmin
from app.ollama.relay import Relay, Relayed
from app.ollama.types import ModelExecutionResult, OllamaModel
from app.ollama.usage import UsageObserver
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
    the server on first use. `placement` holds the pool's placement rules.
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
        self._configured = [state.spec for state in self.pool.states]
        """The start-up list, which the backend registry is laid over."""
        self.registry: BackendRegistry | None = None
        """The backend registry this manager's pool follows (see `aadd_backend`)."""
        if self._owns_pool and use_http_api and self.settings.backend_registry:
            self.registry = BackendRegistry(self.settings.database_url)
            self.pool.membership_sync = self.aapply_backend_registry
        self.placement = PlacementAdmin(self.pool, self.registry)
        self._retiring: dict[asyncio.Task[None], BackendState] = {}
        # Only a manager that talks to its own base_url may start a server for it.
        self._may_start_server = pool is None and not backends
        self._cli = None if use_http_api else OllamaCli(ollama_binary, self.pool.urls[0])
        self._output_manager = output_manager
        self._loop_thread = LoopThread(name="ollama-manager")
        self._models_cache: tuple[float, list[OllamaModel]] | None = None
        self._server = ServerAutoStart(self._probe_base_url)
        self.executor = RunExecutor(
            self.pool,
            self.settings,
            cli=self._cli,
            ensure_server=self._ensure_server,
            store=self.store_result,
        )
        """Runs `RunSpec`s to results (shared with `ModelRunner` and the relay)."""
        self._relay = Relay(self.executor, forget_inventory=self.mark_inventory_stale)

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
        return self._server.running

    def cleanup(self) -> None:
        """Close connections and stop the server if (and only if) this manager started it."""
        if self._loop_thread.started and not self._loop_thread.in_loop_thread():
            with contextlib.suppress(Exception):
                self._loop_thread.run(self._close_clients())
        if self.registry is not None:
            self.registry.close()
        self._server.stop()
        self._loop_thread.close()

    async def aclose(self) -> None:
        """Async `cleanup()`: also closes the clients of the calling event loop."""
        if self._loop_thread.started and not self._loop_thread.in_loop_thread():
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(self._loop_thread.submit(self._close_clients()))
        await self._close_clients()
        if self.registry is not None:
            await self.registry.aclose()
        await asyncio.to_thread(self._server.stop)
        await asyncio.to_thread(self._loop_thread.close)

    async def _close_clients(self) -> None:
        # Backends still draining after the registry took them out: closed now.
        loop = asyncio.get_running_loop()
        retiring = [(t, s) for t, s in list(self._retiring.items()) if t.get_loop() is loop]
        for task, _ in retiring:
            task.cancel()
        await asyncio.gather(*(task for task, _ in retiring), return_exceptions=True)
        for _, state in retiring:
            await state.client.aclose()
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
        (see `ServerAutoStart.ensure`; a manager used again after cleanup() checks anew)."""
        if self.auto_start_server and self._may_start_server:
            await self._server.ensure(self.ollama_binary, self.base_url, self.server_start_timeout)

    async def _probe_base_url(self) -> bool:
        return await self.pool.clients[0].ping(timeout=self.settings.health_timeout)

    # -- backends --------------------------------------------------------------------

    def check_backend(self, backend: str) -> None:
        """Raise ValueError unless `backend` is a configured backend's name or URL, or "all"."""
        self.pool.targets(backend)

    async def aadd_backend(self, backend: str) -> dict[str, Any]:
        """Add a backend at run time (an entry as in GATEWAY_BACKENDS); returns its status.

        ValueError for a bad spec (see `api_backend_spec`: a `token_env` too) or a name or
        URL already in use. With the backend registry (`Settings.backend_registry`, on by
        default) it is recorded there first, so every process and replica sharing the
        database takes it up within seconds and restarts keep it; then this pool at once.
        """
        spec = api_backend_spec(backend, self._configured)
        if self.registry is None:
            state = self.pool.add(spec, source="api")
        else:
            self.pool.check_free(spec)
            await self.registry.aadd(spec, self._configured)
            await self.aapply_backend_registry()
            state = self.pool.targets(spec.name)[0]
        self._models_cache = None
        await self.pool.refresh(state)
        return state.describe()

    async def aremove_backend(self, backend: str) -> None:
        """Take a backend (name or URL) out of the pool; requests in flight on it finish.

        ValueError when it is unknown or the last one. With the backend registry the
        removal is recorded there first (a backend from `GATEWAY_BACKENDS` too), so every
        process and replica drops it within seconds and a restart does not bring it back.
        """
        if self.registry is None:
            state = self.pool.remove(backend)
            self._models_cache = None
            await retire_backend(state, self.settings.request_timeout)
            return
        removed = await self.registry.aremove(backend, self._configured)
        changes = self._reconcile(await self.registry.amembers(self._configured), retire=False)
        for state in changes.removed:
            if state.spec.name == removed.name:
                await retire_backend(state, self.settings.request_timeout)
            else:
                self._retire_later(state)

    async def aapply_backend_registry(self) -> None:
        """Bring the pool in line with the backend registry and stored placement rules (at
        start, then every 2 s by `pool.watch`); removed backends' requests finish later."""
        if self.registry is not None:
            self._reconcile(await self.registry.amembers(self._configured))
            await self.placement.areload()

    def _reconcile(self, wanted: list[Member], *, retire: bool = True) -> Reconciled:
        changes = self.pool.reconcile([(member.spec, member.source) for member in wanted])
        if changes:
            self._models_cache = None
            if changes.added:
                logger.info("backends taken up: %s", [s.spec.name for s in changes.added])
            for state in changes.removed:
                logger.info("backend %s (%s) taken out", state.spec.name, state.spec.url)
                if retire:
                    self._retire_later(state)
        return changes

    def _retire_later(self, state: BackendState) -> None:
        task = asyncio.create_task(
            retire_backend(state, self.settings.request_timeout),
            name=f"retire-backend-{state.spec.name}",
        )
        self._retiring[task] = state
        task.add_done_callback(lambda done: self._retiring.pop(done, None))

    async def amodel_locations(self, force_refresh: bool = False) -> dict[str, list[str]]:
        """Which backends (by name) have each model, keyed by the normalised model name
        (the pool's inventory is reused for `inventory_ttl` seconds unless `force_refresh`)."""
        return await model_locations(self.pool, force_refresh)

    def backend_loads(self) -> list[BackendLoad]:
        """Each backend's load as this process sees it, without asking it (for metrics)."""
        return backend_loads(self.pool)

    def backend_load_history(self, minutes: float) -> list[LoadSample]:
        """Each backend's load sampled over the last `minutes`, oldest first (this process)."""
        return self.pool.load_history.since(minutes * 60)

    async def abackend_status(self) -> list[dict[str, Any]]:
        """Each backend's health (`url`, `healthy`, `version`, `models`, `error`) and load
        (`name`, `circuit`, `outstanding`, `queued`, `max_concurrency`, `loaded`, ...).

        All backends are asked at once, each within `Settings.health_timeout`.
        """
        return await backend_status(self.pool, self.settings.health_timeout)

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
        state = self.pool.state_of(await self.pool.pick(model_name, has_model=same_model))
        async with self.pool.lease(state, model_name):
            try:
                reply = await state.client.embed(model_name, inputs, **extra)
            except BackendError as exc:
                if exc.status is None or exc.status >= 500:
                    self.pool.record_failure(state, exc)
                raise
        self.pool.record_success(state)
        return reply

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

    # -- the raw `/api` surface (see app.ollama.relay) --------------------------------

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
    ) -> Relayed:
        """Forward one raw request to the backend that should serve `model`.

        The door for the Ollama-compatible `/api` surface: the reply comes back unparsed
        (status, headers, streamed body), so the wire format stays Ollama's own. Routing
        is the pool's; a backend that fails before answering (no connection, 5xx, full
        queue) is given up for the next, at most `MAX_ATTEMPTS` in all. A model no backend
        has goes to any healthy backend, which answers in Ollama's own words. With
        `record` (see `relay.spec_of_body`) a generate or chat reply is read on the side
        and the run stored as `store_kind`. `buffered` (a client that waits for the whole
        reply): a reply cut short is retried on the next backend too. Raises
        `BackendError` when no backend answers.
        """
        return await self._relay.arelay(
            method, path, model=model, content=content, headers=headers, record=record,
            store_kind=store_kind, buffered=buffered,
        )  # fmt: skip

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
        return await self._relay.arelay_each(
            method, path, model=model, content=content, headers=headers
        )

    async def aunion(self, listing: Literal["tags", "ps"]) -> list[dict[str, Any]]:
        """`/api/tags` or `/api/ps` of every backend, merged by model name (first wins);
        tags newest first by `modified_at`, as Ollama lists them.

        Backends that do not answer within `Settings.health_timeout` are left out;
        `BackendError` when none answers.
        """
        return await self._relay.aunion(listing)

    def mark_inventory_stale(self) -> None:
        """Forget cached model lists (after a pull, delete or copy that went around them)."""
        self._models_cache = None
        self.pool.mark_stale()
