"""`BackendPool`: the configured Ollama servers, and which one a request goes to.

Routing: only backends whose circuit is closed and that have the model; among those, one
that has the model loaded in memory first (a cold load costs seconds), then the fewest
outstanding requests per unit of weight. Inventory (`/api/tags`, `/api/ps`) is refreshed
when older than `inventory_ttl`. A backend that fails (no connection, 5xx, timeout)
`breaker_threshold` times in a row is taken out for `cooldown` seconds, then tried again.
Each backend admits `max_concurrency` requests at once (when set); up to `max_queue`
more wait at most `queue_timeout` seconds, after which `BackendBusy` (503) is raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.backends.client import OllamaClient
from app.backends.errors import BackendBusy, BackendError, BackendUnavailable

__all__ = [
    "BackendPool",
    "BackendSpec",
    "BackendState",
    "Reconciled",
    "parse_backend",
    "spec_text",
]

logger = logging.getLogger(__name__)

SameModel = Callable[[str, str], bool]


@dataclass(frozen=True)
class BackendSpec:
    """One entry of GATEWAY_BACKENDS: `[name=]url[;max=N][;weight=W]`."""

    url: str
    name: str
    weight: float = 1.0
    max_concurrency: int | None = None


def parse_backend(text: str) -> BackendSpec:
    """`gpu1=http://10.0.0.5:11434;max=4;weight=2` or a bare URL (named by its host:port)."""
    head, *params = [part.strip() for part in text.split(";")]
    name, sep, url = head.partition("=")
    if not sep or "://" in name:
        name, url = "", head
    url = url.strip().rstrip("/")
    if "://" not in url:
        raise ValueError(f"backend {text!r}: expected a URL such as http://host:11434")
    weight, max_concurrency = 1.0, None
    for param in params:
        key, _, value = param.partition("=")
        try:
            if key == "max":
                max_concurrency = int(value)
                if max_concurrency < 1:
                    raise ValueError
            elif key == "weight":
                weight = float(value)
                if weight <= 0:
                    raise ValueError
            else:
                raise KeyError(key)
        except (ValueError, KeyError) as exc:
            raise ValueError(f"backend {text!r}: bad parameter {param!r}") from exc
    return BackendSpec(url=url, name=name or url.split("://", 1)[1], weight=weight,
                       max_concurrency=max_concurrency)  # fmt: skip


def spec_text(spec: BackendSpec) -> str:
    """`spec` written as `parse_backend` reads it: `name=url[;max=N][;weight=W]`."""
    text = f"{spec.name}={spec.url}"
    if spec.max_concurrency is not None:
        text += f";max={spec.max_concurrency}"
    if spec.weight != 1.0:
        text += f";weight={spec.weight!r}"
    return text


@dataclass
class BackendState:
    """What the pool knows of one backend."""

    spec: BackendSpec
    client: OllamaClient
    source: str = "settings"
    """Where it comes from: `settings` (the start-up list) or `api` (added at run time)."""
    outstanding: int = 0
    waiting: int = 0
    failures: int = 0
    down_until: float = 0.0
    last_error: str | None = None
    models: list[str] | None = None
    loaded: list[str] = field(default_factory=list)
    inventory_at: float = 0.0
    waits: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    """Recent queue waits in seconds (requests that had to wait for a slot)."""
    _gates: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return time.monotonic() >= self.down_until

    def gate(self) -> asyncio.Semaphore | None:
        limit = self.spec.max_concurrency
        if limit is None:
            return None
        loop = asyncio.get_running_loop()
        gate = self._gates.get(loop)
        if gate is None:
            gate = self._gates[loop] = asyncio.Semaphore(limit)
        return gate

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "url": self.spec.url,
            "source": self.source,
            "weight": self.spec.weight,
            "max_concurrency": self.spec.max_concurrency,
            "circuit": "closed" if self.available else "open",
            "outstanding": self.outstanding,
            "queued": self.waiting,
            "queue_wait_ms_mean": round(sum(self.waits) / len(self.waits) * 1000, 3)
            if self.waits
            else None,
            "queue_wait_ms_max": round(max(self.waits) * 1000, 3) if self.waits else None,
            "consecutive_failures": self.failures,
            "last_error": self.last_error,
            "models": self.models,
            "loaded": self.loaded,
        }


@dataclass(frozen=True)
class Reconciled:
    """What `BackendPool.reconcile` changed."""

    added: list[BackendState]
    removed: list[BackendState]
    """Taken out of the pool: their owner lets their requests finish and closes them."""

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)


class BackendPool:
    """The configured Ollama servers, one `OllamaClient` each.

    `membership_sync`, when the pool's owner sets it (the core does, to follow its backend
    registry), is run by `watch` every `membership_interval` seconds.
    """

    def __init__(
        self,
        backends: Sequence[str | BackendSpec],
        *,
        timeout: float = 300.0,
        connect_timeout: float = 5.0,
        health_timeout: float = 2.0,
        inventory_ttl: float = 2.0,
        breaker_threshold: int = 2,
        cooldown: float = 5.0,
        max_queue: int = 64,
        queue_timeout: float = 30.0,
        transport: str = "aiohttp",
    ) -> None:
        if not backends:
            raise ValueError("BackendPool needs at least one backend URL")
        specs = [b if isinstance(b, BackendSpec) else parse_backend(b) for b in backends]
        self.health_timeout = health_timeout
        self.inventory_ttl = inventory_ttl
        self.breaker_threshold = breaker_threshold
        self.cooldown = cooldown
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self._lock = threading.Lock()
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.transport = transport
        self.states = [self._state(spec) for spec in specs]
        self.membership_sync: Callable[[], Awaitable[None]] | None = None
        self.membership_interval = 2.0
        self._skipped: set[tuple[str, str]] = set()

    def _state(self, spec: BackendSpec) -> BackendState:
        client = OllamaClient(
            spec.url,
            timeout=self.timeout,
            connect_timeout=self.connect_timeout,
            transport=self.transport,
        )
        return BackendState(spec, client)

    def add(self, backend: str | BackendSpec, *, source: str = "api") -> BackendState:
        """Add a backend at run time (its inventory is fetched on first use).

        ValueError for a bad spec, or a name or URL already in the pool.
        """
        spec = backend if isinstance(backend, BackendSpec) else parse_backend(backend)
        with self._lock:
            self.check_free(spec)
            state = self._state(spec)
            state.source = source
            # a new list, so a request iterating over the old one is not disturbed
            self.states = [*self.states, state]
        return state

    def check_free(self, spec: BackendSpec) -> None:
        """ValueError when `spec`'s name or URL is already in the pool."""
        for state in self.states:
            if spec.name == state.spec.name or spec.url == state.spec.url:
                raise ValueError(
                    f"backend {spec.name!r} ({spec.url}) clashes with {state.spec.name!r} "
                    f"({state.spec.url}), which is already in the pool"
                )

    def reconcile(self, wanted: Sequence[tuple[BackendSpec, str]]) -> Reconciled:
        """Make the pool hold exactly `wanted` (spec and source), in that order.

        A backend whose spec is unchanged keeps its state (circuit, load, inventory,
        client); one whose spec changed is replaced. An entry whose name or URL repeats an
        earlier one is left out (and logged once). An empty `wanted` leaves the pool as it
        is: the pool never goes empty. The caller retires the states taken out.
        """
        with self._lock:
            current = {state.spec.name: state for state in self.states}
            states: list[BackendState] = []
            added: list[BackendState] = []
            names: set[str] = set()
            urls: set[str] = set()
            for spec, source in wanted:
                if spec.name in names or spec.url in urls:
                    if (spec.name, spec.url) not in self._skipped:
                        self._skipped.add((spec.name, spec.url))
                        logger.warning(
                            "backend %s (%s) left out: its name or URL is already in use",
                            spec.name,
                            spec.url,
                        )
                    continue
                names.add(spec.name)
                urls.add(spec.url)
                state = current.get(spec.name)
                if state is None or state.spec != spec:
                    state = self._state(spec)
                    added.append(state)
                state.source = source
                states.append(state)
            if not states:
                logger.warning("the backend list is empty; the pool keeps its backends")
                return Reconciled([], [])
            kept = {id(state) for state in states}
            removed = [state for state in self.states if id(state) not in kept]
            if added or removed or [id(s) for s in states] != [id(s) for s in self.states]:
                self.states = states
        return Reconciled(added, removed)

    def remove(self, backend: str) -> BackendState:
        """Take a backend (by name or URL) out of the pool; its requests in flight finish.

        ValueError when it is not in the pool or is the last one. The caller closes its
        client (`await state.client.aclose()`).
        """
        if backend == "all":
            raise ValueError("name one backend to remove, not 'all'")
        with self._lock:
            state = self.targets(backend)[0]
            if len(self.states) == 1:
                raise ValueError(f"backend {state.spec.name!r} is the last one; add another first")
            self.states = [s for s in self.states if s is not state]
        return state

    @property
    def clients(self) -> list[OllamaClient]:
        return [state.client for state in self.states]

    @property
    def urls(self) -> list[str]:
        return [state.spec.url for state in self.states]

    def __repr__(self) -> str:
        return f"BackendPool({self.urls!r})"

    def state_of(self, client: OllamaClient) -> BackendState:
        return next(s for s in self.states if s.client is client)

    def targets(self, backend: str) -> list[BackendState]:
        """The backends a name, URL or `"all"` means; ValueError for one not configured."""
        if backend == "all":
            return list(self.states)
        wanted = backend.rstrip("/")
        for state in self.states:
            if wanted in (state.spec.name, state.spec.url):
                return [state]
        names = ", ".join(s.spec.name for s in self.states)
        raise ValueError(f"no backend named {backend!r} (configured: {names}, or 'all')")

    # -- health ----------------------------------------------------------------------

    def record_success(self, state: BackendState) -> None:
        state.failures = 0
        state.down_until = 0.0
        state.last_error = None

    def record_failure(self, state: BackendState, error: BackendError) -> None:
        """Count a failure of the backend itself; open its circuit at the threshold."""
        state.failures += 1
        state.last_error = str(error)
        if state.failures >= self.breaker_threshold:
            state.down_until = time.monotonic() + self.cooldown
            state.inventory_at = 0.0

    async def refresh(self, state: BackendState) -> None:
        """Ask one backend for its models and loaded models (within `health_timeout`)."""
        try:
            async with asyncio.timeout(self.health_timeout):
                tags = await state.client.tags(timeout=self.health_timeout)
                running = await state.client.ps()
        except (BackendError, TimeoutError) as exc:
            error = exc if isinstance(exc, BackendError) else BackendUnavailable("timed out")
            state.failures = max(state.failures, self.breaker_threshold - 1)
            self.record_failure(state, error)
            state.models = None
            return
        state.models = [str(t.get("name", "")) for t in tags]
        state.loaded = [str(m.get("name", "")) for m in running]
        state.inventory_at = time.monotonic()
        self.record_success(state)

    def mark_stale(self) -> None:
        """Forget every inventory's age (after a pull or delete changed what is installed)."""
        for state in self.states:
            state.inventory_at = 0.0

    async def refresh_stale(self, *, force: bool = False) -> None:
        now = time.monotonic()
        stale = [
            s
            for s in self.states
            if (force or now - s.inventory_at > self.inventory_ttl)
            and (s.available or force or now >= s.down_until)
        ]
        await asyncio.gather(*(self.refresh(s) for s in stale))

    # -- routing ---------------------------------------------------------------------

    async def candidates(
        self, model: str | None = None, *, has_model: SameModel | None = None
    ) -> list[BackendState]:
        """The backends to try for `model`, best first (see the module docstring).

        With a single backend there is nothing to choose and no probe is made: the request
        itself reports an unreachable server or a missing model.
        """
        if len(self.states) == 1:
            return list(self.states)
        await self.refresh_stale()
        same = has_model or (lambda installed, wanted: installed == wanted)
        healthy = [s for s in self.states if s.available and s.models is not None]
        if not healthy:
            errors = "; ".join(f"{s.spec.url}: {s.last_error}" for s in self.states)
            raise BackendUnavailable("no backend is reachable: " + errors)
        if model is not None:
            having = [s for s in healthy if any(same(m, model) for m in s.models or [])]
            if not having:
                known = sorted({m for s in healthy for m in s.models or []})
                close = difflib.get_close_matches(model, known, n=3, cutoff=0.5)
                hint = f"; close names: {', '.join(close)}" if close else ""
                raise BackendError(f"model '{model}' not found{hint}", status=404)
            healthy = having

        def rank(state: BackendState) -> tuple[int, float]:
            loaded = model is not None and any(same(m, model) for m in state.loaded)
            return (0 if loaded else 1, (state.outstanding + 1) / state.spec.weight)

        return sorted(healthy, key=rank)

    async def pick(
        self, model: str | None = None, *, has_model: SameModel | None = None
    ) -> OllamaClient:
        """The best backend for `model` (the first of `candidates`)."""
        return (await self.candidates(model, has_model=has_model))[0].client

    @contextlib.asynccontextmanager
    async def lease(self, state: BackendState) -> AsyncIterator[BackendState]:
        """Hold one of the backend's request slots for the duration of a request."""
        gate = state.gate()
        if gate is not None and gate.locked() and state.waiting >= self.max_queue:
            raise BackendBusy(
                f"backend {state.spec.name} is at its limit of "
                f"{state.spec.max_concurrency} requests and its queue is full",
                status=503,
                url=state.spec.url,
            )
        state.waiting += 1
        try:
            if gate is not None:
                try:
                    if gate.locked():
                        queued_at = time.monotonic()
                        async with asyncio.timeout(self.queue_timeout):
                            await gate.acquire()
                        state.waits.append(time.monotonic() - queued_at)
                    else:
                        await gate.acquire()
                except TimeoutError:
                    raise BackendBusy(
                        f"backend {state.spec.name} had no free slot within "
                        f"{self.queue_timeout:g}s",
                        status=503,
                        url=state.spec.url,
                    ) from None
        finally:
            state.waiting -= 1
        state.outstanding += 1
        try:
            yield state
        finally:
            state.outstanding -= 1
            if gate is not None:
                gate.release()

    async def watch(self, interval: float) -> None:
        """Refresh every backend's health and inventory every `interval` seconds, forever;
        with a `membership_sync`, also run it every `membership_interval` seconds.

        Run as a task by the app's lifespan (and the `worker` command), so routing rarely
        waits on an inventory, a backend that came back is noticed without a request
        failing first, and backends added or removed elsewhere are followed.
        """
        async with asyncio.TaskGroup() as group:
            group.create_task(
                _every(interval, lambda: self.refresh_stale(force=True), "backend health check")
            )
            if self.membership_sync is not None:
                group.create_task(
                    _every(self.membership_interval, self.membership_sync, "backend list sync")
                )

    def describe(self) -> list[dict[str, Any]]:
        return [state.describe() for state in self.states]

    async def aclose(self) -> None:
        """Close every backend's pooled connections."""
        for state in self.states:
            await state.client.aclose()


async def _every(interval: float, step: Callable[[], Awaitable[None]], what: str) -> None:
    """Run `step` every `interval` seconds, forever; one failing round does not stop it
    (the first failure of a run of them is logged with its traceback)."""
    failing = False
    while True:
        try:
            await step()
        except Exception:
            if failing:
                logger.warning("%s failed again", what)
            else:
                logger.exception("%s failed", what)
            failing = True
        else:
            failing = False
        await asyncio.sleep(interval)
