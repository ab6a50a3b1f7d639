"""`BackendPool`: the configured Ollama servers, and which one a request goes to.

Routing: only backends whose circuit is closed and that have the model; among those, the
one where the request would wait least: its queue, per slot and weight, against the
model's cold-load time there when it is not loaded (see `app.backends.state`). A run whose
prompt is known (`chat_prompt`, `generate_prompt`) goes where its first token is expected
soonest: that wait, plus its prompt tokens not cached there (the prefix index,
`app.backends.prefix`) times the backend's observed prompt evaluation time per token, so a
long conversation stays where its prefix is cached while the wait there is shorter than
evaluating it again elsewhere (`GATEWAY_PREFIX_ROUTING`). Inventory
(`/api/tags`, `/api/ps`) is refreshed when older than `inventory_ttl`. A backend that fails
(no connection, 5xx, timeout) `breaker_threshold` times in a row is taken out for
`cooldown` seconds, then tried again. Each backend admits `max_concurrency` requests at
once and `max_per_model` runs of one model (when set), interactive requests before batch
runs (`app.backends.gate`); up to `max_queue` more wait at most `queue_timeout` seconds,
after which `BackendBusy` (503) is raised.

Placement rules (`app.backends.placement`) narrow the backends a model may use; warm models
are loaded in the health rounds (`app.backends.warm`).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import difflib
import heapq
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from app.backends.client import JSONDict, OllamaClient
from app.backends.errors import BackendBusy, BackendError, BackendUnavailable
from app.backends.gate import batch_runs
from app.backends.load_history import LoadHistory
from app.backends.placement import Placement, PlacementRule
from app.backends.prefix import (
    DEFAULT_BYTES_PER_TOKEN,
    BackendPrefixes,
    ChatMemo,
    Estimate,
    PrefixHolders,
    Prompt,
    SessionHomes,
    SessionPrompts,
    chat_prompt,
    context_keys,
    generate_prompt,
    session_key,
)
from app.backends.spec import BackendSpec, parse_backend, spec_text
from app.backends.state import (
    DEFAULT_LOAD_SECONDS,
    DEFAULT_PROMPT_SECONDS_PER_TOKEN,
    UNLIMITED_SLOTS,
    BackendState,
)
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
RATIO_SAMPLE_BYTES = 4096
"""Uncached text a run must have evaluated to teach the bytes per token (template tokens
dominate shorter ones)."""


@dataclass(frozen=True)
class Reconciled:
    """What `BackendPool.reconcile` changed."""

    added: list[BackendState]
    removed: list[BackendState]
    """Taken out of the pool: their owner lets their requests finish and closes them."""

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)


DISPLACED_CANDIDATES = 8
"""Backends, best-ranked first, for which ranking works out what a request would push out
of their caches (the others keep their time to first token alone: a fleet of tens of
backends with every slot taken would otherwise cost that work for each, per request)."""


Hit = tuple[int, float, float]
"""A backend's longest cached prefix of a request: its keys, its tokens, the tokens left to
evaluate (at least one)."""
_OWN: Hit = (-1, 0.0, 0.0)
"""Marks a backend outside the pool's holders map (it searches its own)."""


def _first_three(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return row[:3]


DISPLACED_WEIGHT = 2.0
"""What a live conversation pushed out of a backend's cache costs, in times its history's
evaluation: it comes back, finds its slot taken and pushes out another in turn, so one more
conversation than a backend has slots costs again on the turns after (agent sessions have
tens of turns). Counted twice, a backend holding as many live conversations as slots takes
a new one only when elsewhere is clearly slower."""

HOME_TIE_SECONDS = 0.005
HOME_TIE_SHARE = 0.02
"""A session's home backend counts as tied with the best-ranked one, and is chosen, when its
expected cost is within `HOME_TIE_SECONDS` or `HOME_TIE_SHARE` of the best's (whichever is
more): the estimates are not that precise (each backend's prompt rate is a running mean of
noisy runs), so a session does not move for microseconds of it."""


class BackendPool:
    """The configured Ollama servers, one `OllamaClient` each.

    `membership_sync`, when the pool's owner sets it (the core does, to follow its backend
    registry), is run by `watch` every `membership_interval` seconds. `model_key` turns a
    model's name into the key its per-model counts and times are kept under (the core
    passes Ollama's name rules; by default a name is its own key). `batch_share` is the
    part of a backend's slots batch runs may hold while interactive requests wait;
    `default_load` the cold-load time assumed for a model before one was seen.
    `placement` (rules) and `keep_warm` (model -> backends) may be replaced at any time by
    the pool's owner. `prefix_routing` turns the prefix index on (routing by expected time
    to first token); `prefix_entries` bounds its keys per backend, `sessions` the client
    sessions it remembers.
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
        load_sample_interval: float = 5.0,
        prefix_routing: bool = True,
        prefix_entries: int = 4096,
        sessions: SessionHomes | None = None,
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
        self.prefix_routing = prefix_routing
        self.prefix_entries = prefix_entries
        self.sessions = sessions if sessions is not None else SessionHomes()
        self.bytes_per_token: dict[str, float] = {}
        self.chat_memo = ChatMemo()
        """Long messages' block keys, so an agent's resent history is fingerprinted at C speed."""
        self.exhaustive_ranking = False
        """Work out every backend's row when ranking by time to first token, not only
        until the best few are known (the same first `DISPLACED_CANDIDATES`; every row
        after them in order too): for checking the shortcut."""
        self.session_prompts = SessionPrompts()
        """Each named session's last chat prompt: its next turn hashes only what is new."""
        self.prefix_holders = PrefixHolders()
        """Which backends hold each prefix key (ranking's matches for the fleet at once)."""
        self._leases = 0
        """Leases handed out (numbers a run's expected work while it holds its slot)."""
        """Per model key, the running mean of prompt text bytes per token (from the
        backends' `prompt_eval_count`)."""
        self.states = [self._state(spec) for spec in specs]
        self.membership_sync: Callable[[], Awaitable[None]] | None = None
        self.load_history = LoadHistory(every=load_sample_interval)
        self.membership_interval = 2.0
        self._skipped: set[tuple[str, str]] = set()
        self.placement = placement if placement is not None else Placement()
        self.keep_warm = KeepWarm(keep_warm or {})

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
        slots = spec.max_per_model or spec.max_concurrency or UNLIMITED_SLOTS
        state.prefixes = BackendPrefixes(slots, self.prefix_entries)
        state.prefixes.attach(self.prefix_holders)
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
        count, duration = final.get("prompt_eval_count"), final.get("prompt_eval_duration")
        if _number(count) and _number(duration):
            state.record_prompt(key, count, duration / 1e9)
        decode = final.get("eval_duration")
        if _number(decode):
            state.record_decode(key, decode / 1e9)
        if not self._is_loaded(state, key):
            state.loaded = [*state.loaded, model]

    def observed(self, state: BackendState, model: str, final: JSONDict) -> None:
        """A run's final object that did not come through the client's own calls (a relayed
        reply): what `OllamaClient.on_final` is told of the others."""
        if "load_duration" in final:
            self._finished(state, model, final)

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
            for state in removed:
                state.prefixes.detach()
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
            state.prefixes.detach()
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
        loaded = {self._key(name) for name in state.loaded}
        for model in state.prefixes.models() - loaded:  # unloaded: its prompt cache is gone
            state.prefixes.forget_model(model)
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
        prompt: Prompt | None = None,
    ) -> list[BackendState]:
        """The backends to try for `model`, best first (see the module docstring).

        Only those `model`'s placement rule allows (or, without `model`, `placed`'s: where
        a pull of it may go); `BackendUnavailable` (503) naming the rule when none of them
        is healthy. With `prompt` (see `chat_prompt`) they are ranked by expected time to
        first token, and `prompt.estimates` says what was expected of each. With a single
        backend there is nothing to choose and no probe is made: the request itself
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
        if prompt is not None and model is not None and key is not None:
            return self._by_first_token(healthy, model, key, same, batch, prompt)

        def rank(state: BackendState) -> tuple[float, float]:
            loaded = model is not None and any(same(m, model) for m in state.loaded)
            return state.expected_wait(
                key, loaded=loaded, batch=batch, default_load=self.default_load
            )

        return sorted(healthy, key=rank)

    def _by_first_token(
        self,
        healthy: list[BackendState],
        model: str,
        key: str,
        same: SameModel,
        batch: bool,
        prompt: Prompt,
    ) -> list[BackendState]:
        """`healthy` by expected time to first token of `prompt`: expected wait (load
        included) plus the tokens not cached there times its prompt time per token; plus,
        where every cache slot of the model is taken, the time a live conversation pushed
        out would take to evaluate its history again (`BackendPrefixes.displaced`: Ollama
        keeps one prompt per parallel slot, and a backend that takes every new session
        because it holds their shared system prompt would make them all evaluate their
        histories again). The session's home counts as holding at least the longest
        prefix held anywhere (up to what its last turn left there) and wins ties, within
        the estimates' noise (`HOME_TIE_SECONDS`, `HOME_TIE_SHARE`).

        Asked for every request: a cheap pass bounds each backend's row from below (its
        uncached tokens at its rate, as if nothing waited there and its model were
        loaded); rows are then worked out in the bounds' order (the wait, the load, the
        home's share), each placed once no bound left is below it, until the first
        `DISPLACED_CANDIDATES` are known. Those, their push-out and their estimates are
        exactly what ranking every backend would give; the backends never worked out (a
        session's next turn: most of them) follow in the order of their bounds. An idle,
        even fleet asks about `DISPLACED_CANDIDATES` waits, a busy or mixed one more, a
        new session's first turn on a fleet holding its system prompt everywhere about
        all of them."""
        home = self.sessions.home(prompt.session)
        home_state: BackendState | None = None
        if home is not None:
            home_state = next((s for s in healthy if s.spec.name == home[0]), None)
        keys, default_load = prompt.keys, self.default_load
        total = prompt.tokens
        everything = total if total > 1.0 else 1.0
        nothing: Hit = (0, 0.0, everything)
        # every backend's longest cached prefix, for the whole fleet at once: what each
        # backend's bit holds (keys, tokens cached and uncached); bit 0, a state set up on
        # its own outside the pool's holders, searches its own
        hits: dict[int, Hit] = {0: _OWN}
        levels = self.prefix_holders.levels(keys)
        for mask, count in levels:
            cached = prompt.tokens_at(count)
            uncached = total - cached
            hit = (count, cached, uncached if uncached > 1.0 else 1.0)
            while mask:
                low = mask & -mask
                hits[low] = hit
                mask ^= low
        get_hit = hits.get

        # A bound below each backend's row, from what is known without its wait: its
        # tokens not cached (were its model loaded) at its prompt rate, its load were
        # nothing ahead of it. Rows are worked out in the bounds' order, and one is
        # placed once no bound left is below it: the best-ranked few exactly as a pass
        # over every backend ranks them, the wait asked of a few backends, not of all.
        # The session's home and backends without a rate of their own are bounded by 0.
        bounds: list[tuple[float, int, float, int, BackendState, Hit, float]] = []
        unrated = outside = False
        for order, state in enumerate(healthy):
            hit = get_hit(state.prefixes.bit, nothing)
            if hit is _OWN:
                hit = self._own_hit(state, prompt, nothing)
                outside = True
            floor = state.load_floor
            rated_as = state.prompt_rate.get(key)  # `seconds_per_token`, inline: per backend
            if rated_as is None:
                unrated = True
                is_home = 0 if state is home_state else 1
                bounds.append((0.0, is_home, floor, order, state, hit, -1.0))
                continue
            rate = rated_as[1] / rated_as[0]
            if state is home_state:
                bounds.append((0.0, 0, floor, order, state, hit, rate))
            else:
                bounds.append((hit[2] * rate, 1, floor, order, state, hit, rate))
        fleet = DEFAULT_PROMPT_SECONDS_PER_TOKEN  # the rate of a backend without its own
        if unrated:
            known = [r for r in (s.seconds_per_token(key) for s in healthy) if r is not None]
            fleet = sum(known) / len(known) if known else fleet
        home_cached = 0.0
        best = 0
        if home_state is not None and home is not None:
            best = _longest_loaded(levels, healthy, prompt if outside else None, model, same)
            home_cached = min(prompt.tokens_at(best), home[1])
        bounds.sort()
        bounds.reverse()  # popped from the end: the least first

        def exact(
            row: tuple[float, int, float, int, BackendState, Hit, float],
        ) -> tuple[float, int, float, int, BackendState, Hit, float]:
            _, is_home, _, order, state, hit, per_token = row
            loaded = any(same(m, model) for m in state.loaded)
            wait, load = state.expected_wait(
                key, loaded=loaded, batch=batch, default_load=default_load
            )
            if not loaded:
                hit = nothing
            if not is_home and hit[0] < best and home_cached > hit[1]:
                uncached = total - home_cached
                hit = (hit[0], home_cached, uncached if uncached > 1.0 else 1.0)
            if per_token < 0.0:
                per_token = fleet
            return (wait + hit[2] * per_token, is_home, load, order, state, hit, per_token)

        worked: list[tuple[float, int, float, int, BackendState, Hit, float]] = []

        def pull() -> tuple[float, int, float, int, BackendState, Hit, float] | None:
            """The next row in rank order (None: none left)."""
            while bounds and (not worked or bounds[-1] < worked[0]):
                heapq.heappush(worked, exact(bounds.pop()))
            return heapq.heappop(worked) if worked else None

        # what a backend would push out of its cache only adds to its cost: it is worked
        # out for the best-ranked ones until the next one's time alone cannot win
        ranked: list[tuple[Any, ...]] = []
        estimates: dict[str, Estimate] = {}
        bound = least_push = float("inf")
        more = 0.0
        while (row := pull()) is not None:
            ttft, is_home, load, order, state, hit, per_token = row
            if ttft >= bound or len(estimates) >= DISPLACED_CANDIDATES:
                # the rest, by their time: the next few get estimates; past the few worked
                # out, one whose slots are all taken is taken to push out at least the
                # least any of them would (had one pushed out nothing, its time would have
                # bounded the rest before the few ran out)
                more = least_push if ttft < bound else 0.0
                rest = [row]
                while len(rest) < DISPLACED_CANDIDATES - len(estimates):
                    if (next_row := pull()) is None:
                        break
                    rest.append(next_row)
                for r in rest[: DISPLACED_CANDIDATES - len(estimates)]:
                    estimates[r[4].spec.name] = Estimate(r[0], r[5][1], r[5][0])
                ranked.extend([_pushing(r, more, key) for r in rest])
                break
            matched, cached, _ = hit
            prefixes = state.prefixes
            pushed = prefixes.displaced(key, keys, cached) if key in prefixes.full_models else 0.0
            cost = ttft + DISPLACED_WEIGHT * pushed * per_token
            if cost < bound:
                bound = cost
            if cost - ttft < least_push:
                least_push = cost - ttft
            estimates[state.spec.name] = Estimate(ttft, cached, matched, pushed)
            ranked.append((cost, is_home, load, order, state))
        ranked.sort()
        # any backend not worked out whose bound is below the last of the first few could
        # rank among them: work it out; the others follow in their bounds' order (each
        # bound, and so each row, no better than the last of the first few)
        top = len(healthy) if self.exhaustive_ranking else DISPLACED_CANDIDATES
        while worked or bounds:
            if len(ranked) >= top:
                last = ranked[top - 1]
                if not (worked and worked[0][:4] < last[:4]) and not (
                    bounds and bounds[-1][:4] < last[:4]
                ):
                    break
            row = pull()
            if row is None:
                break
            bisect.insort(ranked, _pushing(row, more, key))
        if more:
            ranked.extend([_pushing(r, more, key) for r in worked])
            ranked.extend([_pushing(r, more, key) for r in reversed(bounds)])
        else:
            ranked.extend(worked)
            ranked.extend(reversed(bounds))
        ranked.sort()
        if home_state is not None and ranked[0][1]:  # the home, if in the race, is not first
            _home_first(ranked)
        prompt.estimates = estimates
        return [row[4] for row in ranked]

    @staticmethod
    def _own_hit(state: BackendState, prompt: Prompt, nothing: Hit) -> Hit:
        """The longest cached prefix of `prompt` on a backend outside the pool's holders."""
        matched = state.prefixes.matched(prompt.keys)
        if not matched:
            return nothing
        cached = prompt.tokens_at(matched)
        return (matched, cached, max(prompt.tokens - cached, 1.0))

    def _has_free_slot(self, state: BackendState, key: str | None, batch: bool) -> bool:
        """A request would start on `state` now, not queue: a slot of its gate fits, or
        (a backend without `max`) fewer than the `UNLIMITED_SLOTS` it is counted as are
        taken."""
        gate = state.gate(self.batch_share)
        if gate is not None:
            return gate.fits(key, batch)
        return state.outstanding + state.waiting < UNLIMITED_SLOTS

    # -- the prefix index ------------------------------------------------------------

    def chat_prompt(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Any = None,
        session: str | None = None,
    ) -> Prompt | None:
        """A chat's prompt for ranking by time to first token (None: the index is off, or
        the pool has one backend: there is nothing to choose)."""
        if not self.prefix_routing or not messages or len(self.states) < 2:
            return None
        key = self._key_of(model)
        return chat_prompt(
            key,
            messages,
            tools=tools,
            bytes_per_token=self.bytes_per_token.get(key, DEFAULT_BYTES_PER_TOKEN),
            session=session_key(key, session),
            memo=self.chat_memo,
            last=self.session_prompts,
        )

    def generate_prompt(
        self,
        model: str,
        prompt: str,
        *,
        system: str | None = None,
        context: Sequence[int] | None = None,
        raw: bool = False,
        session: str | None = None,
    ) -> Prompt | None:
        """A generate's prompt (its `context` first) for ranking (None: the index is off,
        or a `context` that is not token ids, or one backend)."""
        if not self.prefix_routing or len(self.states) < 2:
            return None
        key = self._key_of(model)
        return generate_prompt(
            key,
            prompt,
            system=system,
            context=context,
            raw=raw,
            bytes_per_token=self.bytes_per_token.get(key, DEFAULT_BYTES_PER_TOKEN),
            session=session_key(key, session),
            memo=self.chat_memo,
        )

    def served(
        self,
        prompt: Prompt | None,
        state: BackendState,
        *,
        reply: str | None = None,
        final: Mapping[str, Any] | None = None,
    ) -> None:
        """`state` answered `prompt` (`reply`, ending with `final`): its prompt cache holds
        the prompt and the reply, and the session's next turn should find them there."""
        if prompt is None:
            return
        prefixes = state.prefixes
        estimate = prompt.estimates.get(state.spec.name)
        evaluated = final.get("prompt_eval_count") if final is not None else None
        if estimate is not None and _number(evaluated):
            self._learn_bytes_per_token(prompt, estimate.matched, float(evaluated))
        held = prompt.tokens
        context = final.get("context") if final is not None else None
        if prompt.kind == "generate" and isinstance(context, list) and context:
            whole = context_keys(prompt.model, context)
            if whole is not None:  # the whole conversation's ids: what the slot holds
                prompt.sequence = prefixes.record(
                    prompt.model, whole.keys, whole.ends, replaces=prompt.sequence
                )
                held = whole.tokens
        elif prompt.kind == "chat" and reply is not None and prompt.keys:
            more = prompt.extended("assistant", reply)
            prefixes.extend(prompt.sequence, more.keys, more.ends)
            held = more.tokens
        self.sessions.remember(prompt.session, state.spec.name, held)

    def _learn_bytes_per_token(self, prompt: Prompt, matched: int, evaluated: float) -> None:
        """A run evaluated `evaluated` tokens where the index expected the first `matched`
        keys cached: the uncached text's bytes over its tokens (a context's ids counted
        exactly), when there was enough text to tell."""
        if not prompt.text_bytes or evaluated <= 0:
            return
        text_before = prompt.text_bytes[matched - 1] if matched > 0 else 0
        text = prompt.text_bytes[-1] - text_before
        if text < RATIO_SAMPLE_BYTES:
            return
        ids = (prompt.tokens - prompt.tokens_at(matched)) - text / prompt.bytes_per_token
        tokens = evaluated - max(0.0, ids)
        if tokens <= 0:
            return
        sample = min(16.0, max(1.0, text / tokens))
        old = self.bytes_per_token.get(prompt.model)
        self.bytes_per_token[prompt.model] = sample if old is None else old + 0.3 * (sample - old)

    async def pick(
        self, model: str | None = None, *, has_model: SameModel | None = None
    ) -> OllamaClient:
        """The best backend for `model` (the first of `candidates`)."""
        return (await self.candidates(model, has_model=has_model))[0].client

    def _work_of(self, state: BackendState, key: str | None, prompt: Prompt | None) -> float | None:
        """The expected prompt time of a run the index placed on `state` (None: another
        run)."""
        if prompt is None or key is None:
            return None
        estimate = prompt.estimates.get(state.spec.name)
        cached = estimate.cached if estimate is not None else 0.0
        rate = state.seconds_per_token(key) or DEFAULT_PROMPT_SECONDS_PER_TOKEN
        return max(prompt.tokens - cached, 1.0) * rate

    @contextlib.asynccontextmanager
    async def lease(
        self, state: BackendState, model: str | None = None, *, prompt: Prompt | None = None
    ) -> AsyncIterator[BackendState]:
        """Hold one of the backend's request slots for the duration of a request (for a
        run of `model`, when given: counted against `max_per_model`, timed for ranking).
        Once the slot is held, the prefix index counts `prompt` as evaluated there (so the
        runs that share its prefix and come meanwhile find it).

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
        work = self._work_of(state, key, prompt)
        state.count_waiting(key, batch, 1, work)
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
            state.count_waiting(key, batch, -1, work)
        cold = key is not None and not self._is_loaded(state, key)
        if prompt is not None:
            prompt.chosen = state.spec.name
            prompt.sequence = state.prefixes.record(prompt.model, prompt.keys, prompt.ends_view())
        started = time.monotonic()
        self._leases += 1
        held = (self._leases, work) if work is not None else None
        state.count_running(key, batch, cold, 1, started=started, work=held)
        try:
            yield state
        finally:
            state.count_running(key, batch, cold, -1, started=started, work=held)
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


def _pushing(row: tuple[Any, ...], more: float, key: str) -> tuple[Any, ...]:
    """A ranking row past the few whose push-out was worked out: `more` added to its time
    when every cache slot of the model is taken there."""
    if more and key in row[4].prefixes.full_models:
        return (row[0] + more, row[1], row[2], row[3], row[4])
    return row


def _longest_loaded(
    levels: list[tuple[int, int]],
    healthy: list[BackendState],
    outside: Prompt | None,
    model: str,
    same: SameModel,
) -> int:
    """The longest prefix of a prompt held by a backend of `healthy` with the model loaded
    (`levels`: the pool's holders' bits by length, longest first, as
    `PrefixHolders.levels` gives them); with `outside` (the prompt: some backend is
    outside the holders map), those search their own."""
    found = 0
    for mask, count in levels:
        for state in healthy:
            if state.prefixes.bit & mask and any(same(m, model) for m in state.loaded):
                found = count
                break
        if found:
            break
    if outside is not None:
        for state in healthy:
            if not state.prefixes.bit and any(same(m, model) for m in state.loaded):
                found = max(found, state.prefixes.matched(outside.keys))
    return found


def _home_first(ranked: list[tuple[Any, ...]]) -> None:
    """Put the session's home (the row whose second field is 0) first when its cost (the
    first field) is within the tie margins of the best's (`HOME_TIE_SECONDS`,
    `HOME_TIE_SHARE`)."""
    best = ranked[0][0]
    margin = max(HOME_TIE_SECONDS, HOME_TIE_SHARE * best)
    for i, row in enumerate(ranked):
        if row[0] - best > margin:
            return
        if not row[1]:
            ranked.insert(0, ranked.pop(i))
            return


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


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
