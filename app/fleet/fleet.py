"""`Fleet`: the backends of one process's pool administered at run time.

Backends added or removed through the API (`/gateway/backends`) and placement rules set
through it (`/gateway/placement`) are kept in the backend registry (the database) when
`Settings.backend_registry` is on, so every process and replica follows them (each pool's
`watch` calls `apply_registry` every 2 s) and restarts keep them; otherwise a change stays
in the process that made it. `Fleet` also answers what the backends are doing: their
status, their load and its history, and where each model is.

The lifespan (and `worker`) builds one beside the core's `OllamaManager`, around its pool.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from app.backends.load_history import LoadSample
from app.backends.pool import BackendPool, BackendState, Reconciled
from app.backends.spec import BackendSpec, parse_backend
from app.fleet.placement import PlacementAdmin
from app.fleet.registry import BackendRegistry, Member
from app.fleet.status import (
    BackendLoad,
    backend_loads,
    backend_status,
    model_locations,
    retire_backend,
)
from app.settings import Settings

__all__ = ["API_TOKEN_ENV_PREFIX", "Fleet", "api_backend_spec"]

logger = logging.getLogger(__name__)

API_TOKEN_ENV_PREFIX = "BACKEND_TOKEN_"
"""What the name of a `token_env` given through the API starts with, unless a start-up
entry already names it: the API cannot have another variable of the gateway's
environment (its database URL, its cloud credentials) sent to a URL of its choosing."""


def api_backend_spec(text: str, configured: Sequence[BackendSpec]) -> BackendSpec:
    """A backend added through the API, read from `text`; ValueError for a bad spec, or a
    `token_env` the API may not name (see `API_TOKEN_ENV_PREFIX`) or that is not set."""
    spec = parse_backend(text)
    env = spec.token_env
    if env is None:
        return spec
    if not env.startswith(API_TOKEN_ENV_PREFIX) and env not in {c.token_env for c in configured}:
        raise ValueError(
            f"token_env {env!r}: through the API, the variable's name must start with "
            f"{API_TOKEN_ENV_PREFIX!r} (or be one GATEWAY_BACKENDS names)"
        )
    if spec.token() is None:
        raise ValueError(
            f"token_env {env!r}: the variable is not set in the gateway's environment (or "
            "holds more than printable characters without spaces)"
        )
    return spec


class Fleet:
    """The backends of `pool` (see the module docstring). `forget_inventory` is called when
    the backends change (the core's cached model lists are then stale)."""

    def __init__(
        self,
        pool: BackendPool,
        settings: Settings,
        *,
        forget_inventory: Callable[[], None] = lambda: None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self._forget_inventory = forget_inventory
        self._configured = [state.spec for state in pool.states]
        """The start-up list, which the backend registry is laid over."""
        self.registry: BackendRegistry | None = None
        if settings.backend_registry:
            self.registry = BackendRegistry(settings.database_url)
            pool.membership_sync = self.apply_registry
        self.placement = PlacementAdmin(pool, self.registry)
        self._retiring: dict[asyncio.Task[None], BackendState] = {}

    async def aclose(self) -> None:
        """Stop following the registry; backends still draining are closed now."""
        if self.pool.membership_sync == self.apply_registry:
            self.pool.membership_sync = None
        retiring = list(self._retiring.items())
        for task, _ in retiring:
            task.cancel()
        await asyncio.gather(*(task for task, _ in retiring), return_exceptions=True)
        for _, state in retiring:
            await state.client.aclose()
        if self.registry is not None:
            await self.registry.aclose()

    # -- membership ------------------------------------------------------------------

    def check_backend(self, backend: str) -> None:
        """Raise ValueError unless `backend` is a configured backend's name or URL, or "all"."""
        self.pool.targets(backend)

    async def aadd_backend(self, backend: str) -> dict[str, Any]:
        """Add a backend at run time (an entry as in GATEWAY_BACKENDS); returns its status.

        ValueError for a bad spec (see `api_backend_spec`: a `token_env` too) or a name or
        URL already in use. With the backend registry it is recorded there first, so every
        process and replica sharing the database takes it up within seconds and restarts
        keep it; then this pool at once.
        """
        spec = api_backend_spec(backend, self._configured)
        if self.registry is None:
            state = self.pool.add(spec, source="api")
        else:
            self.pool.check_free(spec)
            await self.registry.aadd(spec, self._configured)
            await self.apply_registry()
            state = self.pool.targets(spec.name)[0]
        self._forget_inventory()
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
            self._forget_inventory()
            await retire_backend(state, self.settings.request_timeout)
            return
        removed = await self.registry.aremove(backend, self._configured)
        changes = self._reconcile(await self.registry.amembers(self._configured), retire=False)
        for state in changes.removed:
            if state.spec.name == removed.name:
                await retire_backend(state, self.settings.request_timeout)
            else:
                self._retire_later(state)

    async def apply_registry(self) -> None:
        """Bring the pool in line with the backend registry and stored placement rules (at
        start, then every 2 s by `pool.watch`); removed backends' requests finish later."""
        if self.registry is not None:
            self._reconcile(await self.registry.amembers(self._configured))
            await self.placement.areload()

    def _reconcile(self, wanted: list[Member], *, retire: bool = True) -> Reconciled:
        changes = self.pool.reconcile([(member.spec, member.source) for member in wanted])
        if changes:
            self._forget_inventory()
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

    # -- what the backends are doing ---------------------------------------------------

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
