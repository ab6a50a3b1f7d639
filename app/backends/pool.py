"""`BackendPool`: the configured Ollama servers, and which one a request goes to.

Routing: only backends whose circuit is closed and that have the model; among those, the
one where the request would wait least: its queue, per slot and weight, against the
model's cold-load time there when it is not loaded (see `app.backends.state`). Inventory
(`/api/tags`, `/api/ps`) is refreshed when older than `inventory_ttl`. A backend that fails
(no connection, 5xx, timeout) `breaker_threshold` times in a row is taken out for
`cooldown` seconds, then tried again. Each backend admits `max_concurrency` requests at
once and `max_per_model` runs of one model (when set), interactive requests before batch
runs (`app.backends.gate`); up to `max_queue` more wait at most `queue_timeout` seconds,
after which `BackendBusy` (503) is raised.

Placement rules (`app.backends.placement`) narrow the backends a model may use; a chat's
earlier backend is preferred while it has a free slot (`app.backends.affinity`); warm
models are loaded in the health rounds (`app.backends.warm`).
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.backends.affinity import ConversationAffinity
from app.backends.client import JSONDict, OllamaClient
from app.backends.errors import BackendBusy, BackendError, BackendUnavailable
from app.backends.gate import batch_runs
from app.backends.load_history import LoadHistory
from app.backends.placement import Placement, PlacementRule
from app.backends.spec import BackendSpec, parse_backend, spec_text
from app.backends.state import DEFAULT_LOAD_SECONDS, UNLIMITED_SLOTS, BackendState
from app.backends.warm import KeepWarm, expiry_of

__all__ = [
    "BackendPool",
    "BackendSpec",
    "BackendState",
    "Reconciled",
    "parse_backend",
    "spec_text",
]  # the spec and the state live in app.backends.spec and .state; kept here for importers

logger = logging.getLogger(__name__)

SameModel = Callable[[str, str], bool]


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
    registry), is run by `watch` every `membership_interval` seconds. `model_key` turns a
    model's name into the key its per-model counts and times are kept under (the core
    passes Ollama's name rules; by default a name is its own key). `batch_share` is the
    part of a backend's slots batch runs may hold while interactive requests wait;
    `default_load` the cold-load time assumed for a model before one was seen.
    `placement` (rules), `keep_warm` (model -> backends) and `affinity` (remembered
    conversations) may be replaced at any time by the pool's owner.
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
        batch_share: float = 0.5,
        default_load: float = DEFAULT_LOAD_SECONDS,
        model_key: Callable[[str], str] | None = None,
        placement: Placement | None = None,
        keep_warm: Mapping[str, int] | None = None,
        affinity: ConversationAffinity | None = None,
        load_sample_interval: float = 5.0,
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
        self.batch_share = batch_share
        self.default_load = default_load
        self.model_key = model_key or (lambda name: name)
        self._lock = threading.Lock()
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.transport = transport
        self.states = [self._state(spec) for spec in specs]
        self.membership_sync: Callable[[], Awaitable[None]] | None = None
        self.load_history = LoadHistory(every=load_sample_interval)
        self.membership_interval = 2.0
        self._skipped: set[tuple[str, str]] = set()
        self.placement = placement if placement is not None else Placement()
        self.keep_warm = KeepWarm(keep_warm or {})
        self.affinity = affinity if affinity is not None else ConversationAffinity()

    def _state(self, spec: BackendSpec) -> BackendState:
        token = spec.token()
        if spec.token_env is not None and token is None:
            logger.warning(
                "backend %s: the environment variable %s holds no token; none is sent",
                spec.name,
                spec.token_env,
            )
        client = OllamaClient(
            spec.url,
            timeout=self.timeout,
            connect_timeout=self.connect_timeout,
            transport=self.transport,
            token=token,
        )
        state = BackendState(spec, client, token_set=token is not None)
        client.on_final = lambda model, final: self._finished(state, model, final)
        return state

    def _key(self, model: str | None) -> str | None:
        if model is None:
            return None
        try:
            return self.model_key(model)
        except ValueError:
            return model

    def _finished(self, state: BackendState, model: str, final: JSONDict) -> None:
        """A run of `model` finished on `state`: its cold-load time is noted when it started
        while the model was not loaded there, and the model counts as loaded from now."""
        key = self._key(model) or model
        load = final.get("load_duration")
        if state.cold_runs[key] and isinstance(load, int | float) and load > 0:
            state.record_load(key, load / 1e9)
        if not self._is_loaded(state, key):
            state.loaded = [*state.loaded, model]

    def _is_loaded(self, state: BackendState, key: str) -> bool:
        return any(self._key(name) == key for name in state.loaded)

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
        until = {self._key(str(m.get("name", ""))): expiry_of(m.get("expires_at")) for m in running}
        state.loaded_until = {key: t for key, t in until.items() if key and t is not None}
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

    def rule_for(self, model: str | None) -> PlacementRule | None:
        """The placement rule deciding where `model` runs (None: anywhere)."""
        key = self._key(model)
        return None if key is None else self.placement.rule_for(key, self.model_key)

    async def candidates(
        self,
        model: str | None = None,
        *,
        has_model: SameModel | None = None,
        placed: str | None = None,
        prefer: str | None = None,
    ) -> list[BackendState]:
        """The backends to try for `model`, best first (see the module docstring).

        Only those `model`'s placement rule allows (or, without `model`, `placed`'s: where
        a pull of it may go); `BackendUnavailable` (503) naming the rule when none of them
        is healthy. `prefer` (a backend name) comes first while it has a free slot (see
        `_has_free_slot`). With a
        single backend there is nothing to choose and no probe is made: the request itself
        reports an unreachable server or a missing model.
        """
        rule = self.rule_for(model if model is not None else placed)
        if len(self.states) == 1 and (rule is None or rule.allows(self.states[0].spec)):
            return list(self.states)
        await self.refresh_stale()
        same = has_model or (lambda installed, wanted: installed == wanted)
        healthy = [s for s in self.states if s.available and s.models is not None]
        if rule is not None:
            subject = model if model is not None else placed
            allowed = [s for s in self.states if rule.allows(s.spec)]
            healthy = [s for s in healthy if rule.allows(s.spec)]
            if not healthy:
                state_of = "none is healthy" if allowed else "no backend in the pool matches"
                raise BackendUnavailable(
                    f"model '{subject}': its {rule.describe()} allows no healthy backend "
                    f"({state_of})"
                )
        if not healthy:
            errors = "; ".join(f"{s.spec.url}: {s.last_error}" for s in self.states)
            raise BackendUnavailable("no backend is reachable: " + errors)
        if model is not None:
            having = [s for s in healthy if any(same(m, model) for m in s.models or [])]
            if not having:
                known = sorted({m for s in healthy for m in s.models or []})
                close = difflib.get_close_matches(model, known, n=3, cutoff=0.5)
                hint = f"; close names: {', '.join(close)}" if close else ""
                where = f" on the backends its {rule.describe()} allows" if rule else ""
                raise BackendError(f"model '{model}' not found{where}{hint}", status=404)
            healthy = having

        key, batch = self._key(model), batch_runs.get()

        def rank(state: BackendState) -> tuple[float, float]:
            loaded = model is not None and any(same(m, model) for m in state.loaded)
            return state.expected_wait(
                key, loaded=loaded, batch=batch, default_load=self.default_load
            )

        ranked = sorted(healthy, key=rank)
        if prefer is not None and ranked[0].spec.name != prefer:
            for i, state in enumerate(ranked):
                if state.spec.name == prefer and self._has_free_slot(state, key, batch):
                    ranked.insert(0, ranked.pop(i))
                    break
        return ranked

    def _has_free_slot(self, state: BackendState, key: str | None, batch: bool) -> bool:
        """A request would start on `state` now, not queue: a slot of its gate fits, or
        (a backend without `max`) fewer than the `UNLIMITED_SLOTS` it is counted as are
        taken."""
        gate = state.gate(self.batch_share)
        if gate is not None:
            return gate.fits(key, batch)
        return state.outstanding + state.waiting < UNLIMITED_SLOTS

    def preferred(self, model: str, messages: Sequence[Mapping[str, Any]]) -> str | None:
        """The backend that served the conversation `messages` continue, if remembered."""
        return self.affinity.prefer(self._key_of(model), messages)

    def served(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        reply: str,
        state: BackendState,
    ) -> None:
        """`state` answered the chat `messages` with `reply`: its next turn should go there."""
        self.affinity.remember(self._key_of(model), messages, reply, state.spec.name)

    async def pick(
        self, model: str | None = None, *, has_model: SameModel | None = None
    ) -> OllamaClient:
        """The best backend for `model` (the first of `candidates`)."""
        return (await self.candidates(model, has_model=has_model))[0].client

    @contextlib.asynccontextmanager
    async def lease(
        self, state: BackendState, model: str | None = None
    ) -> AsyncIterator[BackendState]:
        """Hold one of the backend's request slots for the duration of a request (for a
        run of `model`, when given: counted against `max_per_model`, timed for ranking).

        A run in a batch context (`app.backends.gate.as_batch`) waits behind interactive
        requests."""
        key, batch = self._key(model), batch_runs.get()
        gate = state.gate(self.batch_share)
        if gate is not None and not gate.fits(key, batch) and state.waiting >= self.max_queue:
            spec = state.spec
            limits = ", ".join(
                f"{name}={value}"
                for name, value in (
                    ("max", spec.max_concurrency),
                    ("max_per_model", spec.max_per_model),
                )
                if value is not None
            )
            raise BackendBusy(
                f"backend {state.spec.name} is at its limit ({limits}) and its queue is full",
                status=503,
                url=state.spec.url,
            )
        state.count_waiting(key, batch, 1)
        try:
            if gate is not None:
                try:
                    if gate.fits(key, batch):
                        await gate.acquire(key, batch)
                    else:
                        queued_at = time.monotonic()
                        async with asyncio.timeout(self.queue_timeout):
                            await gate.acquire(key, batch)
                        state.waits.append(time.monotonic() - queued_at)
                except TimeoutError:
                    raise BackendBusy(
                        f"backend {state.spec.name} had no free slot within "
                        f"{self.queue_timeout:g}s",
                        status=503,
                        url=state.spec.url,
                    ) from None
        finally:
            state.count_waiting(key, batch, -1)
        cold = key is not None and not self._is_loaded(state, key)
        started = time.monotonic()
        state.count_running(key, batch, cold, 1, started=started)
        try:
            yield state
        finally:
            state.count_running(key, batch, cold, -1, started=started)
            if gate is not None:
                gate.release(key, batch)
        if key is not None:  # only a run that ended normally is timed
            state.record_service(key, time.monotonic() - started)

    async def watch(self, interval: float) -> None:
        """Refresh every backend's health and inventory every `interval` seconds, forever;
        with a `membership_sync`, also run it every `membership_interval` seconds.

        Run as a task by the app's lifespan (and the `worker` command), so routing rarely
        waits on an inventory, a backend that came back is noticed without a request
        failing first, and backends added or removed elsewhere are followed.
        """
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(_every(interval, self.health_round, "backend health check"))
                group.create_task(
                    _every(self.load_history.every, self._sample_load, "backend load sample")
                )
                if self.membership_sync is not None:
                    group.create_task(
                        _every(self.membership_interval, self.membership_sync, "backend list sync")
                    )
        finally:
            await self.keep_warm.aclose()

    async def health_round(self) -> None:
        """Check every backend's health and inventory, then keep the warm models loaded."""
        await self.refresh_stale(force=True)
        if self.keep_warm:
            self.keep_warm.step(self.states, self.placement, self._key_of, self.timeout)

    async def _sample_load(self) -> None:
        self.load_history.sample(self.states)

    def _key_of(self, model: str) -> str:
        return self._key(model) or model

    def describe(self) -> list[dict[str, Any]]:
        return [state.describe() for state in self.states]

    async def aclose(self) -> None:
        """Stop the warm loads under way and close every backend's pooled connections."""
        await self.keep_warm.aclose()
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
