"""A fleet of 64 simulated Ollama servers in simulated time, routed by the pool's own code.

Run: `python bench/fleet_sim.py [--seed N] [--plot PATH]` (about 30 s on the 2-core
machine). It replays one workload under three routing policies and prints p50 and
p99 time to first token, cold loads per hour, backend utilisation and failures side by
side, and saves a plot (TTFT CDFs, and p99 TTFT per hour of the simulated day).

Policies:

- `round robin`: the next healthy backend that has the model installed, in turn;
- `least outstanding`: the healthy backend with the model and the fewest requests sent to
  it and not finished (ties in turn);
- `gateway`: the real `BackendPool`: `candidates()` (health, inventory, expected-wait
  ranking), `lease()` (the priority `SlotGate`: interactive before batch, `batch_share`),
  `record_success` / `record_failure` (circuit breaker), the client's `on_final` hook
  (`BackendPool._finished`: cold-load times, loaded models) and `watch()` (health checks),
  configured as the core's `pool_options` configures it (`pool_options` below) with
  placement rules (L models on big and mid GPUs, XL on big ones: `candidates()` filters by
  `rule_for`), keep-warm (the six most requested models that are not XL on 12 down to 2
  backends: the pool's `KeepWarm`, run by `watch()`'s health rounds, sends each backend an
  empty `/api/generate` with `keep_alive: -1`) and the prefix index (each chat's messages
  go through `pool.chat_prompt` into `candidates(prompt=...)` and `lease(prompt=...)`,
  and `pool.served` after it finished, as the executor does). Nothing of these is stood
  in for.

All three share the same simulated backends, the same health checks and circuit breaker
(`pool.watch`, `pool.refresh_stale`, `record_failure`) and the executor's failover (at
most `MAX_ATTEMPTS` backends a request, as `RunExecutor._execute_http`: a failure before
the first token starts the request over on the next backend, one after it continues
there). They differ in the choice, and in admission: the baselines send every request
straight to Ollama's own FIFO queue; the gateway waits in the pool's gate.

Simulated time. Everything runs on `VirtualTimeLoop`, an asyncio event loop whose clock
jumps to the next timer instead of sleeping, so the pool's async code (`candidates`,
`lease`, `asyncio.timeout` of the queue, `watch`) runs unchanged at simulation speed. The
pool and backend state read `time.monotonic()` (circuit cool-down, inventory age, run
times): `simulated_clock()` points the `time` module name of the `app.backends` modules
at the loop's clock for the duration of one simulation (and restores it after).
`candidates` is called with exact names (`has_model=None`, no `model_key`): the
simulation's names are already in Ollama's normal form, so the core's `same_model` would
agree, but it costs about 2 ms a call at 64 backends of 28 models (0.3 ms with exact
names), which alone would take the run past a minute.

No code of `app.backends` is copied or changed: the pool is built from real specs
(`parse_backend`), each state's client is swapped for a `SimClient` (keeping the pool's
`on_final` hook), and the rest is the pool's own code.

Simulated backends (`SimBackend`): GPU classes big (80 GB, 4 slots), mid (48 GB, 3) and
small (24 GB, 2), one eighth, three eighths and half of the fleet. Every model that fits
in 85% of a backend's memory is installed there. Loading a model takes 2-20 s by size,
evicting idle models least recently used first (a model idle for 5 minutes unloads,
Ollama's `keep_alive`); concurrent requests for a model being loaded wait for that load.
Decoding runs at 20-150 tokens/s by model size and GPU class (slots do not slow each
other); prompt evaluation at 25 times that, and a follow-up turn of a conversation on the
backend that ran the previous turn (with the model still loaded) evaluates only the new
part of its prompt: each backend keeps the prompt prefixes of its last `4 x slots`
conversations. The backends answer `/api/tags` and `/api/ps` (with `expires_at`, in the
simulated wall time `SIM_EPOCH` plus the loop's clock) for the pool's inventory refresh,
and keep-warm's empty `/api/generate` (`SimClient`); a chat's messages are short texts
standing for its turns (what the prefix index hashes).

Workload (`make_workload`): 30 models, popularity Zipf (s=1) over a fixed order that mixes
sizes; a day's arrival ramp (trough at 04:00, peak at 14:00, a raised cosine) compressed
into `day_seconds` of simulated time (default 2400 s: each hour of the day is 100
simulated seconds, so the day is some 20,000 requests and the run stays well under a
minute; loads, decoding, think time and keep-alive stay in real seconds); Poisson sessions, 35% of them conversations of 2-6 turns with a think time of
about 20 s between a reply and the next turn; batch jobs (Poisson, 40-150 prompts of one
model, 4 or 8 at a time, prompts 300-1000 tokens) whose runs are `batch` under
`as_batch()`. One big backend dies at 11:00 (its runs in flight and queued fail) and
comes back, empty, at 14:00.

Metrics: time to first token (arrival at the gateway to the first token, over every
attempt) of interactive requests (p50, p99) and, separately, of batch runs; cold loads per
simulated hour (loads a request waited for; keep-warm preloads are counted apart);
utilisation (slot-seconds held by a run, loading included, over all slot-seconds of
backends alive) and the part of it spent loading; the share of conversation turns whose
prompt prefix was cached where they ran; requests failed (after every attempt) and
attempts retried; `aff hits`, the turns that ran on the backend where the pool's prefix
index expected most of their prompt cached.

`--policies` may add `pool ranking only` (the pool's ranking, gate and bookkeeping without
placement rules, keep-warm or the prefix index) and `pool + prefix index` (with the
prefix index only), to see what those add.

`--workload agents` replays coding-agent sessions instead (`app/../bench/fleet_sim.py`'s
second half, `AgentConfig`): see `agent_main`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.backends.errors import BackendBusy, BackendError, BackendUnavailable  # noqa: E402
from app.backends.gate import as_batch  # noqa: E402
from app.backends.placement import parse_placement  # noqa: E402
from app.backends.pool import BackendPool  # noqa: E402
from app.backends.prefix import Prompt  # noqa: E402
from app.backends.spec import parse_backend  # noqa: E402
from app.backends.state import BackendState  # noqa: E402

MAX_ATTEMPTS = 3
"""Backends one request tries at most (`app.ollama.executor.MAX_ATTEMPTS`)."""
HEALTH_INTERVAL = 10.0
"""`GATEWAY_HEALTH_INTERVAL`'s default: seconds between `pool.watch` rounds."""
KEEP_ALIVE = 300.0
"""Ollama's default `keep_alive`: an idle model unloads after this many seconds."""
USABLE_MEMORY = 0.85
"""Part of a backend's memory models may take (the rest: KV caches, the runtime)."""
PREFILL_FACTOR = 25.0
"""Prompt evaluation runs this many times faster than decoding."""
CACHED_CONVERSATIONS_PER_SLOT = 4

POLICIES = ("round robin", "least outstanding", "gateway")


# -- simulated time ----------------------------------------------------------------------


class SimulationStalled(RuntimeError):
    """Nothing is ready and no timer is set, yet the simulation is not finished."""


class _NoSelector:
    """The selector of `VirtualTimeLoop`: no I/O; waiting moves the clock instead."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._loop = loop

    def select(self, timeout: float | None) -> list[Any]:
        if timeout is None:
            raise SimulationStalled("no task can make progress")
        self._loop.advance(timeout)
        return []

    def close(self) -> None:
        pass


class VirtualTimeLoop(asyncio.BaseEventLoop):
    """An event loop in simulated time: when nothing is ready, its clock jumps to the next
    timer. No I/O (there is none in the simulation)."""

    def __init__(self, horizon: float = math.inf) -> None:
        super().__init__()
        self._now = 0.0
        self._selector = _NoSelector(self)
        self._clock_resolution = 1e-6
        self.horizon = horizon
        """Simulated time past which the simulation is taken to be stuck."""

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += max(0.0, seconds)
        if self._now > self.horizon:
            raise SimulationStalled(f"still running at {self._now:.0f} simulated seconds")

    def _process_events(self, event_list: list[Any]) -> None:
        pass

    def _write_to_self(self) -> None:
        pass


SIM_EPOCH = 1_795_000_000.0
"""Wall time (`time.time()`, seconds since the epoch) at simulated time 0."""


class _SimTime:
    """Stands in for the `time` module in `app.backends`: `monotonic()` is the loop's clock,
    `time()` is `SIM_EPOCH` plus it (keep-warm compares `/api/ps`'s `expires_at` with it);
    everything else is the real module's."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._loop = loop

    def monotonic(self) -> float:
        return self._loop.time()

    def time(self) -> float:
        return SIM_EPOCH + self._loop.time()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@contextlib.contextmanager
def simulated_clock(loop: VirtualTimeLoop) -> Iterator[None]:
    """Point `time` (and any `monotonic` imported from it) in the `app.backends` modules at
    `loop`'s clock (`time.time()` at `SIM_EPOCH` plus it) for the block."""
    shim = _SimTime(loop)
    patched: list[tuple[Any, str, Any]] = []
    for name, module in list(sys.modules.items()):
        if name != "app.backends" and not name.startswith("app.backends."):
            continue
        for attr, value in list(vars(module).items()):
            if value is time:
                patched.append((module, attr, value))
                setattr(module, attr, shim)
            elif value is time.monotonic:
                patched.append((module, attr, value))
                setattr(module, attr, shim.monotonic)
    try:
        yield
    finally:
        for module, attr, value in patched:
            setattr(module, attr, value)


# -- the fleet and its models ------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    name: str
    params_b: float
    rank: int
    """Popularity rank, 1 the most requested."""

    @property
    def memory_gb(self) -> float:
        return 0.6 * self.params_b + 0.5

    @property
    def size(self) -> str:
        """`S` (under 4B), `M` (under 10B), `L` (under 40B) or `XL`."""
        for limit, size in ((4, "S"), (10, "M"), (40, "L")):
            if self.params_b < limit:
                return size
        return "XL"

    @property
    def load_seconds(self) -> float:
        """Cold-load time: 2 s for the smallest to 20 s for a 72B model."""
        return min(20.0, max(2.0, 1.5 + 0.42 * self.memory_gb))

    @property
    def decode_big(self) -> float:
        """Tokens/s on a big GPU (memory-bandwidth bound: slower for bigger models)."""
        return min(150.0, 150.0 * float((2.3 / self.memory_gb) ** 0.65))


# In popularity order (Zipf over this order), sizes mixed.
CATALOGUE: tuple[tuple[str, float], ...] = (
    ("llama3.1:8b", 8),
    ("qwen2.5:7b", 7),
    ("llama3.2:3b", 3),
    ("qwen2.5-coder:7b", 7),
    ("gemma2:9b", 9),
    ("llama3.3:70b", 70),
    ("qwen2.5:14b", 14),
    ("mistral:7b", 7),
    ("deepseek-r1:8b", 8),
    ("phi4:14b", 14),
    ("llama3.2:1b", 1),
    ("qwen2.5:3b", 3),
    ("gemma2:27b", 27),
    ("mistral-small:24b", 24),
    ("deepseek-r1:7b", 7),
    ("phi3.5:3.8b", 3.8),
    ("qwen2.5:32b", 32),
    ("gemma2:2b", 2),
    ("codellama:7b", 7),
    ("qwen2.5:72b", 72),
    ("deepseek-r1:32b", 32),
    ("granite3.1-dense:8b", 8),
    ("qwen2.5:1.5b", 1.5),
    ("smollm2:1.7b", 1.7),
    ("llava:7b", 7),
    ("aya-expanse:8b", 8),
    ("deepseek-r1:1.5b", 1.5),
    ("olmo2:7b", 7),
    ("qwen2.5:0.5b", 0.5),
    ("granite3.1-moe:3b", 3),
)
MODELS: tuple[ModelSpec, ...] = tuple(
    ModelSpec(name, params, rank) for rank, (name, params) in enumerate(CATALOGUE, 1)
)


@dataclass(frozen=True)
class GpuClass:
    name: str
    memory_gb: float
    slots: int
    speed: float
    """Decode and prompt speed relative to a big GPU."""


GPU_CLASSES = (
    GpuClass("big", 80.0, 4, 1.0),
    GpuClass("mid", 48.0, 3, 0.8),
    GpuClass("small", 24.0, 2, 0.6),
)


@dataclass(frozen=True)
class BackendPlan:
    name: str
    gpu: GpuClass
    installed: tuple[ModelSpec, ...]

    @property
    def spec_text(self) -> str:
        """Its GATEWAY_BACKENDS entry, as an operator would write it."""
        return f"{self.name}=http://{self.name}.sim:11434;max={self.gpu.slots};tags=gpu-{self.gpu.name}"


def build_fleet(n: int) -> list[BackendPlan]:
    """`n` backends: an eighth big, three eighths mid, the rest small (at least one big)."""
    big = max(1, n // 8)
    mid = (3 * n) // 8
    classes = [GPU_CLASSES[0]] * big + [GPU_CLASSES[1]] * mid + [GPU_CLASSES[2]] * (n - big - mid)
    return [
        BackendPlan(
            f"{gpu.name}-{i:02d}",
            gpu,
            tuple(m for m in MODELS if m.memory_gb <= USABLE_MEMORY * gpu.memory_gb),
        )
        for i, gpu in enumerate(classes)
    ]


# -- the workload ------------------------------------------------------------------------


@dataclass(frozen=True)
class Turn:
    think: float
    """Seconds after the previous turn's reply that this turn is sent."""
    new_tokens: int
    """The new user message, in tokens."""
    out_tokens: int


@dataclass(frozen=True)
class Session:
    sid: int
    start: float
    model: ModelSpec
    system_tokens: int
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class Job:
    jid: int
    start: float
    model: ModelSpec
    concurrency: int
    prompts: tuple[tuple[int, int], ...]
    """(prompt tokens, output tokens) of each run."""


@dataclass(frozen=True)
class Config:
    backends: int = 64
    day_seconds: float = 2400.0
    """Simulated seconds the day's ramp is compressed into."""
    trough_rate: float = 2.0
    """Interactive requests per second at 04:00."""
    peak_rate: float = 13.0
    """Interactive requests per second at 14:00."""
    conversation_share: float = 0.35
    job_interval: float = 90.0
    """Mean simulated seconds between two batch jobs."""
    die_hour: float = 11.0
    back_hour: float = 14.0
    seed: int = 18


@dataclass(frozen=True)
class Workload:
    sessions: tuple[Session, ...]
    jobs: tuple[Job, ...]


def _zipf_weights(n: int, s: float = 1.0) -> list[float]:
    return [1.0 / (k**s) for k in range(1, n + 1)]


def _lognormal_int(rng: random.Random, median: float, sigma: float, low: int, high: int) -> int:
    return int(min(high, max(low, rng.lognormvariate(math.log(median), sigma))))


def day_rate(config: Config, t: float) -> float:
    """Interactive requests per second at simulated time `t` (a raised cosine over the day)."""
    hour = 24.0 * t / config.day_seconds
    shape = (1.0 - math.cos(2 * math.pi * (hour - 4.0) / 24.0)) / 2.0
    return config.trough_rate + (config.peak_rate - config.trough_rate) * shape


def make_workload(config: Config) -> Workload:
    """The sessions and jobs of one simulated day, from `config.seed` (the same for every
    policy)."""
    rng = random.Random(config.seed)
    weights = _zipf_weights(len(MODELS))
    mean_turns = 1 + config.conversation_share * 3.0  # conversations: 2-6 turns, mean 4
    sessions: list[Session] = []
    t, peak = 0.0, max(config.peak_rate, config.trough_rate) / mean_turns
    while True:  # a non-homogeneous Poisson process, by thinning
        t += rng.expovariate(peak)
        if t >= config.day_seconds:
            break
        if rng.random() * peak > day_rate(config, t) / mean_turns:
            continue
        model = rng.choices(MODELS, weights)[0]
        n_turns = rng.randint(2, 6) if rng.random() < config.conversation_share else 1
        turns = tuple(
            Turn(
                think=0.0 if i == 0 else max(3.0, rng.expovariate(1 / 20.0)),
                new_tokens=_lognormal_int(rng, 300 if i == 0 else 80, 0.8, 10, 4000),
                out_tokens=_lognormal_int(rng, 300, 0.7, 10, 2000),
            )
            for i in range(n_turns)
        )
        sessions.append(Session(len(sessions), t, model, rng.randint(50, 800), turns))
    jobs: list[Job] = []
    t = 0.0
    while True:
        t += rng.expovariate(1 / config.job_interval)
        if t >= config.day_seconds * 0.95:
            break
        model = rng.choices(MODELS[:12], weights[:12])[0]
        prompts = tuple(
            (rng.randint(300, 1000), _lognormal_int(rng, 200, 0.5, 20, 800))
            for _ in range(rng.randint(40, 150))
        )
        jobs.append(Job(len(jobs), t, model, rng.choice((4, 8)), prompts))
    return Workload(tuple(sessions), tuple(jobs))


# -- simulated Ollama --------------------------------------------------------------------


@dataclass
class Request:
    """One request (a turn, or a run of a job) and what became of it."""

    model: ModelSpec
    prompt_tokens: int
    """The whole prompt: system, history and the new message."""
    out_tokens: int
    batch: bool
    arrival: float
    conversation: int | None = None
    first_token: float | None = None
    done: float | None = None
    delivered: int = 0
    """Tokens sent to the caller before a failure (continued on the next backend)."""
    attempts: int = 0
    failed: bool = False
    backend: str | None = None
    load_wait: float = 0.0
    """Seconds it waited for a model to load (over every attempt)."""
    cached: bool = False
    """Its prompt's prefix was in the backend's prompt cache."""
    errors: list[str] = field(default_factory=list)
    """What each failed attempt raised (the exception's class, and where)."""
    chat: list[dict[str, str]] | None = None
    """An interactive request's messages (system, the earlier turns, the new one), for
    the pool's conversation affinity: text standing for the conversation's."""
    reply: str = ""
    """The reply's text (likewise a stand-in text)."""
    preferred: str | None = None
    """The backend where the pool's prefix index expected most of `chat` cached, if any."""
    prompt: Prompt | None = None
    """`chat` as the pool's prefix index fingerprinted it."""
    evaluated: int = 0
    """Prompt tokens the backends evaluated for it (over every attempt)."""

    @property
    def affinity_hit(self) -> bool:
        """It ran on the backend where the pool's prefix index expected its prefix."""
        return self.preferred is not None and self.backend == self.preferred


class _Resident:
    """A model in a backend's memory."""

    __slots__ = ("_expires", "last_used", "model", "pinned", "ready", "runs", "waiters")

    def __init__(self, model: ModelSpec, now: float, pinned: bool) -> None:
        self.model = model
        self.runs = 1
        self.ready = False
        self.pinned = pinned
        self.last_used = now
        self.waiters: list[asyncio.Future[None]] = []
        self._expires: tuple[float, str] | None = None

    def expires_at(self) -> str:
        """`KEEP_ALIVE` after its last use, as `/api/ps` writes it (kept per last use)."""
        if self._expires is None or self._expires[0] != self.last_used:
            at = datetime.fromtimestamp(SIM_EPOCH + self.last_used + KEEP_ALIVE, UTC)
            self._expires = (self.last_used, at.isoformat())
        return self._expires[1]


_FOREVER = "2318-08-30T00:00:00+00:00"
"""The `expires_at` Ollama reports for a model loaded with `keep_alive: -1`."""
MODEL_BY_NAME = {m.name: m for m in MODELS}


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class SimBackend:
    """One Ollama server: `slots` runs at once (more wait in its FIFO queue), models in
    memory (least recently used evicted), a prompt cache per conversation."""

    def __init__(self, plan: BackendPlan, loop: VirtualTimeLoop) -> None:
        self.plan = plan
        self.name = plan.name
        self.loop = loop
        self.gpu = plan.gpu
        self.installed = {m.name for m in plan.installed}
        self._tags = [{"name": name} for name in sorted(self.installed)]
        self.alive = True
        self.resident: OrderedDict[str, _Resident] = OrderedDict()
        self.used_gb = 0.0
        self.free_slots = plan.gpu.slots
        self._queue: deque[asyncio.Future[None]] = deque()
        self._memory_waiters: list[asyncio.Future[None]] = []
        self._waits: dict[asyncio.Future[None], asyncio.TimerHandle | None] = {}
        self.cache: OrderedDict[int, tuple[_Resident, int]] = OrderedDict()
        self.cache_size = CACHED_CONVERSATIONS_PER_SLOT * plan.gpu.slots
        self.outstanding = 0
        self.loads = 0
        self.preloads = 0
        self.busy = 0.0
        self.busy_loading = 0.0
        self.alive_since = 0.0
        self.alive_seconds = 0.0

    # -- waiting, failed at once when the server dies ---------------------------------

    async def _wait(self, future: asyncio.Future[None], handle: asyncio.TimerHandle | None) -> None:
        self._waits[future] = handle
        try:
            await future
        finally:
            self._waits.pop(future, None)

    async def _sleep(self, seconds: float) -> None:
        future = self.loop.create_future()
        await self._wait(future, self.loop.call_later(seconds, _resolve, future))

    def die(self) -> None:
        """The server goes away: everything in flight or queued fails, memory is lost."""
        self.alive = False
        self.alive_seconds += self.loop.time() - self.alive_since
        error = BackendUnavailable(f"{self.name}: connection reset")
        waits, self._waits = list(self._waits.items()), {}
        self._queue.clear()
        self._memory_waiters.clear()
        for future, handle in waits:
            if handle is not None:
                handle.cancel()
            if not future.done():
                future.set_exception(error)
        self.resident.clear()
        self.used_gb = 0.0
        self.cache.clear()

    def revive(self) -> None:
        """Back, with nothing loaded."""
        self.alive = True
        self.alive_since = self.loop.time()

    def utilisation_seconds(self, end: float) -> float:
        alive = self.alive_seconds + (end - self.alive_since if self.alive else 0.0)
        return alive * self.gpu.slots

    # -- the API the pool's inventory refresh uses -------------------------------------

    def _check_alive(self) -> None:
        if not self.alive:
            raise BackendUnavailable(f"{self.name}: connection refused")

    def tags(self) -> list[dict[str, Any]]:
        self._check_alive()
        return self._tags

    def ps(self) -> list[dict[str, Any]]:
        """Loaded models with Ollama's `expires_at` (simulated wall time, `SIM_EPOCH`
        based): far off for one kept (`keep_alive: -1`), `KEEP_ALIVE` after its last use
        for another."""
        self._check_alive()
        now = self.loop.time()
        return [
            {"name": name, "expires_at": _FOREVER if r.pinned else r.expires_at()}
            for name, r in self.resident.items()
            if r.ready and (r.runs or r.pinned or now - r.last_used < KEEP_ALIVE)
        ]

    # -- slots -------------------------------------------------------------------------

    async def _acquire_slot(self) -> None:
        if self.free_slots > 0 and not self._queue:
            self.free_slots -= 1
            return
        future = self.loop.create_future()
        self._queue.append(future)
        await self._wait(future, None)  # granted with the slot

    def _release_slot(self) -> None:
        while self._queue:
            future = self._queue.popleft()
            if not future.done():
                future.set_result(None)
                return
        self.free_slots += 1

    # -- memory ------------------------------------------------------------------------

    def _drop(self, name: str) -> None:
        resident = self.resident.pop(name)
        self.used_gb -= resident.model.memory_gb

    def _make_room(self, gb: float) -> bool:
        """Evict idle models (least recently used first, kept-warm ones last) until `gb`
        fit; False when not enough are idle."""
        budget = USABLE_MEMORY * self.gpu.memory_gb
        for pinned in (False, True):
            for name, r in list(self.resident.items()):
                if self.used_gb + gb <= budget:
                    return True
                if r.ready and r.runs == 0 and r.pinned == pinned:
                    self._drop(name)
        return self.used_gb + gb <= budget

    async def load(self, model: ModelSpec, *, pinned: bool = False) -> float:
        """Have `model` loaded and count a run of it; the seconds this waited for a load."""
        started = self.loop.time()
        while True:
            r = self.resident.get(model.name)
            now = self.loop.time()
            idle = r is not None and r.ready and not r.runs and not r.pinned
            if r is not None and idle and now - r.last_used >= KEEP_ALIVE:
                self._drop(model.name)  # unloaded meanwhile (keep_alive)
                r = None
            if r is not None:
                self.resident.move_to_end(model.name)
                r.runs += 1
                r.pinned = r.pinned or pinned
                if not r.ready:  # being loaded for another request
                    future = self.loop.create_future()
                    r.waiters.append(future)
                    try:
                        await self._wait(future, None)
                    except BaseException:
                        r.runs -= 1
                        raise
                return self.loop.time() - started
            if self._make_room(model.memory_gb):
                break
            future = self.loop.create_future()
            self._memory_waiters.append(future)
            await self._wait(future, None)
        r = _Resident(model, self.loop.time(), pinned)
        self.resident[model.name] = r
        self.used_gb += model.memory_gb
        if pinned:
            self.preloads += 1
        else:
            self.loads += 1
        try:
            await self._sleep(model.load_seconds)
        except BaseException:
            r.runs -= 1
            raise
        r.ready = True
        for future in r.waiters:
            _resolve(future)
        r.waiters.clear()
        return self.loop.time() - started

    def unuse(self, model: ModelSpec) -> None:
        r = self.resident.get(model.name)
        if r is None:
            return
        r.runs -= 1
        r.last_used = self.loop.time()
        if r.runs == 0 and self._memory_waiters:
            waiters, self._memory_waiters = self._memory_waiters, []
            for future in waiters:
                _resolve(future)

    async def preload(self, model: ModelSpec) -> None:
        """Load `model` and keep it (`keep_alive: -1`), holding no slot: what an empty
        `/api/generate` with `keep_alive: -1` does. BackendUnavailable when down."""
        self._check_alive()
        await self.load(model, pinned=True)
        self.unuse(model)

    # -- a run -------------------------------------------------------------------------

    async def run(self, req: Request) -> float:
        """Run `req` here; the seconds it waited for a model load (Ollama's load_duration).

        BackendUnavailable when the server is or goes down; tokens already sent are kept
        in `req.delivered` for the next backend to continue from."""
        self._check_alive()
        model = req.model
        self.outstanding += 1
        try:
            await self._acquire_slot()
            held = self.loop.time()
            try:
                loaded = await self.load(model)
                req.load_wait += loaded
                self.busy_loading += loaded
                try:
                    return loaded + await self._generate(req)
                finally:
                    self.unuse(model)
            finally:
                self.busy += self.loop.time() - held
                self._release_slot()
        finally:
            self.outstanding -= 1

    async def _generate(self, req: Request) -> float:
        model, conv = req.model, req.conversation
        resident = self.resident[model.name]
        decode = model.decode_big * self.gpu.speed
        prompt = req.prompt_tokens + req.delivered
        cached = 0
        if conv is not None and conv in self.cache:
            holder, tokens = self.cache[conv]
            if holder is resident:
                cached = min(tokens, prompt)
                req.cached = True
        req.evaluated += prompt - cached
        await self._sleep((prompt - cached) / (decode * PREFILL_FACTOR))
        if req.first_token is None:
            req.first_token = self.loop.time()
        remaining = req.out_tokens - req.delivered
        started = self.loop.time()
        try:
            await self._sleep(remaining / decode)
        except BackendError:
            req.delivered += int((self.loop.time() - started) * decode)
            raise
        req.delivered = req.out_tokens
        if conv is not None:
            self.cache[conv] = (resident, req.prompt_tokens + req.out_tokens)
            self.cache.move_to_end(conv)
            if len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        return 0.0


class SimClient:
    """What `BackendPool.refresh` and the pool's keep-warm ask of a backend's client,
    answered by a `SimBackend`."""

    def __init__(self, backend: SimBackend, base_url: str) -> None:
        self.backend = backend
        self.base_url = base_url
        self.on_final: Callable[[str, dict[str, Any]], None] | None = None

    async def tags(self, timeout: float | None = None) -> list[dict[str, Any]]:  # noqa: ASYNC109
        return self.backend.tags()

    async def ps(self) -> list[dict[str, Any]]:
        return self.backend.ps()

    async def generate(
        self,
        payload: dict[str, Any],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """What the pool's keep-warm sends: an empty generate with `keep_alive: -1`, which
        loads the model and keeps it (`done_reason: load`). Nothing else asks it."""
        if payload.get("prompt") or payload.get("keep_alive") != -1:
            raise NotImplementedError(f"the simulation only warm-loads: {payload!r}")
        name = str(payload["model"])
        await self.backend.preload(MODEL_BY_NAME[name])
        return {"model": name, "response": "", "done": True, "done_reason": "load"}

    async def aclose(self) -> None:
        pass


# -- policies ----------------------------------------------------------------------------


Choice = tuple[BackendState, SimBackend]


class Policy(Protocol):
    name: str
    rules: frozenset[str]
    """Which of the pool's rules it is given: `placement`, `keep-warm`, `prefix`."""

    async def order(self, req: Request) -> list[Choice]:
        """The backends to try for `req`, best first."""
        ...

    async def run_on(self, choice: Choice, req: Request) -> None: ...


class _Baseline:
    """Shared by the baselines: healthy backends (the pool's circuit and inventory, as
    every policy has them) that have the model; runs go straight to Ollama's queue."""

    name = ""
    rules: frozenset[str] = frozenset()

    def __init__(self, pool: BackendPool, backends: dict[str, SimBackend]) -> None:
        self.pool = pool
        self.backends = backends

    async def eligible(self, req: Request) -> list[Choice]:
        await self.pool.refresh_stale()  # the same health and inventory as the pool's own
        name = req.model.name
        having = [
            (s, self.backends[s.spec.name])
            for s in self.pool.states
            if s.available and s.models is not None and name in s.models
        ]
        if not having:
            raise BackendUnavailable(f"no healthy backend has {name}")
        return having

    async def run_on(self, choice: Choice, req: Request) -> None:
        await choice[1].run(req)


class RoundRobin(_Baseline):
    name = "round robin"

    def __init__(self, pool: BackendPool, backends: dict[str, SimBackend]) -> None:
        super().__init__(pool, backends)
        self.turn = 0

    async def order(self, req: Request) -> list[Choice]:
        having = await self.eligible(req)
        i = self.turn % len(having)
        self.turn += 1
        return having[i:] + having[:i]


class LeastOutstanding(_Baseline):
    name = "least outstanding"

    def __init__(self, pool: BackendPool, backends: dict[str, SimBackend]) -> None:
        super().__init__(pool, backends)
        self.turn = 0

    async def order(self, req: Request) -> list[Choice]:
        having = await self.eligible(req)
        i = self.turn % len(having)  # ties in turn
        self.turn += 1
        return sorted(having[i:] + having[:i], key=lambda c: c[1].outstanding)


# The gateway's rules for this fleet, given to the pool as the core's `pool_options`
# (`app.ollama.pool_setup`) gives it GATEWAY_PLACEMENT, GATEWAY_KEEP_WARM and the prefix index
# settings: the pool applies them with its own code.

PLACEMENT: dict[str, tuple[str, ...]] = {"XL": ("gpu-big",), "L": ("gpu-big", "gpu-mid")}
"""Tags a model of each size may run on (sizes not named: anywhere)."""
WARM_MODELS = 6
"""The most requested models (XL ones left out) kept warm..."""
MOST_COPIES = 12
"""...on this many backends for the most requested, fewer (at least 2) for the others."""


def placement_rules() -> dict[str, list[str]]:
    """GATEWAY_PLACEMENT for the fleet: each L and XL model (by name) on the GPU classes
    `PLACEMENT` allows for its size."""
    return {
        m.name: [f"tag:{tag}" for tag in PLACEMENT[m.size]] for m in MODELS if m.size in PLACEMENT
    }


def keep_warm_map() -> dict[str, int]:
    """GATEWAY_KEEP_WARM for the fleet: model -> backends keeping it loaded."""
    warm = [m for m in MODELS if m.size != "XL"][:WARM_MODELS]
    return {m.name: max(2, round(MOST_COPIES * warm[0].rank / m.rank)) for m in warm}


def pool_options(rules: frozenset[str]) -> dict[str, Any]:
    """The pool's `placement`, `keep_warm` and `prefix_routing` for the rules a policy uses
    (`placement`, `keep-warm`, `prefix`), built as `app.ollama.pool_setup.pool_options` builds
    them from settings; a rule left out is the setting's default (off)."""
    return {
        "placement": parse_placement(placement_rules() if "placement" in rules else {}),
        "keep_warm": keep_warm_map() if "keep-warm" in rules else {},
        "prefix_routing": "prefix" in rules,
    }


class Gateway:
    """The gateway's full policy: the real `BackendPool` with its placement rules,
    the prefix index (`chat_prompt`, `candidates(prompt=...)`, `lease` and `served`, as the
    executor calls them) and keep-warm (run by `pool.watch`'s health rounds)."""

    name = "gateway"
    rules = frozenset({"placement", "keep-warm", "prefix"})

    def __init__(self, pool: BackendPool, backends: dict[str, SimBackend]) -> None:
        self.pool = pool
        self.backends = backends

    async def order(self, req: Request) -> list[Choice]:
        model = req.model.name
        req.prompt = self.pool.chat_prompt(model, req.chat) if req.chat else None
        ranked = await self.pool.candidates(model, prompt=req.prompt)  # the real routing
        if req.prompt is not None and req.prompt.estimates:
            name, best = max(req.prompt.estimates.items(), key=lambda e: e[1].cached)
            req.preferred = name if best.cached > 0 else None
        return [(s, self.backends[s.spec.name]) for s in ranked]

    async def run_on(self, choice: Choice, req: Request) -> None:
        state, backend = choice
        model = req.model.name
        async with self.pool.lease(state, model, prompt=req.prompt):  # the real gate
            evaluated = req.evaluated
            load = await backend.run(req)
            final = {
                "model": model,
                "done": True,
                "load_duration": int(load * 1e9),
                "prompt_eval_count": req.evaluated - evaluated,
                "prompt_eval_duration": int(
                    (req.evaluated - evaluated)
                    / (req.model.decode_big * backend.gpu.speed * PREFILL_FACTOR)
                    * 1e9
                ),
            }
            on_final = state.client.on_final
            if on_final is not None:  # what the client tells the pool at a run's end
                on_final(model, final)
        self.pool.served(req.prompt, state, reply=req.reply, final=final)


class PoolOnly(Gateway):
    """The pool's ranking, gate and bookkeeping without placement rules, keep-warm or
    prefix index (not one of the three compared by default: it tells what those add)."""

    name = "pool ranking only"
    rules = frozenset()


class PoolAffinity(Gateway):
    """The pool with its prefix index (routing by expected time to first token) only."""

    name = "pool + prefix index"
    rules = frozenset({"prefix"})


POLICY_TYPES: dict[str, Callable[[BackendPool, dict[str, SimBackend]], Policy]] = {
    "round robin": RoundRobin,
    "least outstanding": LeastOutstanding,
    "gateway": Gateway,
    "pool ranking only": PoolOnly,
    "pool + prefix index": PoolAffinity,
}


# -- one simulation ----------------------------------------------------------------------


@dataclass
class PolicyResult:
    policy: str
    requests: list[Request]
    sim_seconds: float
    slot_seconds: float
    busy_seconds: float
    loading_seconds: float
    loads: int
    preloads: int
    retried: int
    wall_seconds: float
    config: Config
    ranking_calls: int = 0

    def ttft(self, batch: bool) -> list[float]:
        return sorted(
            r.first_token - r.arrival
            for r in self.requests
            if r.batch is batch and r.first_token is not None and not r.failed
        )

    @property
    def affinity_hits(self) -> int:
        """Turns that ran on the backend where the pool's prefix index expected their prefix."""
        return sum(1 for r in self.requests if r.affinity_hit and not r.failed)

    def failed(self, batch: bool) -> int:
        return sum(1 for r in self.requests if r.batch is batch and r.failed)

    @property
    def loads_per_hour(self) -> float:
        return self.loads / (self.sim_seconds / 3600.0)

    @property
    def utilisation(self) -> float:
        return self.busy_seconds / self.slot_seconds if self.slot_seconds else 0.0

    @property
    def loading(self) -> float:
        """Share of all slot-seconds spent waiting for a model to load."""
        return self.loading_seconds / self.slot_seconds if self.slot_seconds else 0.0

    @property
    def cached(self) -> float:
        """Share of conversation turns whose prompt prefix was cached where they ran."""
        turns = [r for r in self.requests if r.conversation is not None and not r.failed]
        return sum(r.cached for r in turns) / len(turns) if turns else math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted `values` (nan when empty)."""
    if not values:
        return math.nan
    return values[min(len(values) - 1, max(0, math.ceil(q / 100 * len(values)) - 1))]


class Simulation:
    """One policy over the workload, on a fresh fleet and pool in simulated time."""

    def __init__(self, config: Config, workload: Workload, policy: str) -> None:
        self.config = config
        self.workload = workload
        self.loop = VirtualTimeLoop(horizon=3 * config.day_seconds + 3600)
        plans = build_fleet(config.backends)
        self.backends = {p.name: SimBackend(p, self.loop) for p in plans}
        rules = POLICY_TYPES[policy].rules  # type: ignore[attr-defined]
        self.pool = BackendPool([parse_backend(p.spec_text) for p in plans], **pool_options(rules))
        for state in self.pool.states:
            client = SimClient(self.backends[state.spec.name], state.spec.url)
            client.on_final = state.client.on_final  # the pool's `_finished`
            state.client = client  # type: ignore[assignment]
        self.policy = POLICY_TYPES[policy](self.pool, self.backends)
        self.requests: list[Request] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.retried = 0

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def serve(self, req: Request) -> None:
        """A request through the policy, failing over as the executor does."""
        self.requests.append(req)
        try:
            order = await self.policy.order(req)
        except BackendError as exc:
            req.errors.append(type(exc).__name__)
            req.failed = True
            return
        attempts = order[:MAX_ATTEMPTS]
        for i, choice in enumerate(attempts):
            req.attempts += 1
            try:
                await self.policy.run_on(choice, req)
            except BackendError as exc:
                req.errors.append(f"{type(exc).__name__} at {choice[1].name}")
                if not isinstance(exc, BackendBusy):
                    self.pool.record_failure(choice[0], exc)
                if i == len(attempts) - 1:
                    req.failed = True
                    return
                self.retried += 1
                continue
            self.pool.record_success(choice[0])
            req.done = self.loop.time()
            req.backend = choice[1].name
            return

    async def session(self, s: Session) -> None:
        history = s.system_tokens
        chat = [{"role": "system", "content": f"system {s.sid}"}]
        for i, turn in enumerate(s.turns):
            if turn.think:
                await asyncio.sleep(turn.think)
                if self.loop.time() >= self.config.day_seconds:
                    return
            req = Request(
                s.model,
                history + turn.new_tokens,
                turn.out_tokens,
                batch=False,
                arrival=self.loop.time(),
                conversation=s.sid if len(s.turns) > 1 else None,
                chat=[*chat, {"role": "user", "content": f"turn {s.sid}.{i}"}],
                reply=f"reply {s.sid}.{i}",
            )
            await self.serve(req)
            if req.failed:
                return
            history += turn.new_tokens + turn.out_tokens
            chat = [*(req.chat or ()), {"role": "assistant", "content": req.reply}]

    async def job(self, job: Job) -> None:
        prompts = iter(job.prompts)

        async def worker() -> None:
            for prompt, out in prompts:
                await self.serve(Request(job.model, prompt, out, True, self.loop.time()))

        with as_batch():  # the job runner's mark: its runs wait behind interactive requests
            await asyncio.gather(*(worker() for _ in range(job.concurrency)))

    async def arrivals(self) -> None:
        """Start each session and job at its time."""
        starts: list[tuple[float, Session | Job]] = [
            *((s.start, s) for s in self.workload.sessions),
            *((j.start, j) for j in self.workload.jobs),
        ]
        starts.sort(key=lambda pair: pair[0])
        for start, what in starts:
            await asyncio.sleep(start - self.loop.time())
            self._spawn(self.session(what) if isinstance(what, Session) else self.job(what))

    async def main(self) -> None:
        config = self.config
        watch = self.loop.create_task(self.pool.watch(HEALTH_INTERVAL))
        self._spawn(self.arrivals())
        dying = next(b for b in self.backends.values() if b.gpu.name == "big")
        self.loop.call_at(config.die_hour / 24 * config.day_seconds, dying.die)
        self.loop.call_at(config.back_hour / 24 * config.day_seconds, dying.revive)
        await asyncio.sleep(config.day_seconds)
        while self.tasks:
            await asyncio.gather(*list(self.tasks))
        watch.cancel()  # its end cancels the warm loads under way
        with contextlib.suppress(asyncio.CancelledError):
            await watch

    def choose(self, req: Request) -> list[str]:
        """The backends the policy would try for `req` now, best first (without running
        it): for looking at one decision."""
        with simulated_clock(self.loop):
            order = self.loop.run_until_complete(self.policy.order(req))
        return [backend.name for _, backend in order]

    def settle(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` to its end in simulated time (to set up a state by hand)."""
        with simulated_clock(self.loop):
            self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.loop.close()

    def run(self) -> PolicyResult:
        wall = time.perf_counter()
        with simulated_clock(self.loop):
            try:
                self.loop.run_until_complete(self.main())
            finally:
                self.loop.close()
        end = self.loop.time()
        backends = self.backends.values()
        return PolicyResult(
            policy=self.policy.name,
            requests=self.requests,
            sim_seconds=end,
            slot_seconds=sum(b.utilisation_seconds(end) for b in backends),
            busy_seconds=sum(b.busy for b in backends),
            loading_seconds=sum(b.busy_loading for b in backends),
            loads=sum(b.loads for b in backends),
            preloads=sum(b.preloads for b in backends),
            retried=self.retried,
            wall_seconds=time.perf_counter() - wall,
            config=self.config,
        )


def simulate(config: Config, policies: Sequence[str] = POLICIES) -> list[PolicyResult]:
    """Every policy in `policies` over the same workload."""
    workload = make_workload(config)
    return [Simulation(config, workload, policy).run() for policy in policies]


# -- report ------------------------------------------------------------------------------


def table(results: Sequence[PolicyResult]) -> str:
    """The policies side by side, one row each (seconds, except where named)."""
    head = (
        f"{'policy':<18} {'TTFT p50':>9} {'TTFT p99':>9} {'batch p50':>10} {'batch p99':>10} "
        f"{'cold loads/h':>13} {'preloads':>9} {'util':>6} {'loading':>8} {'cached':>7} "
        f"{'aff hits':>9} {'failed':>7} {'retried':>8}"
    )
    lines = [head]
    for r in results:
        inter, batch = r.ttft(False), r.ttft(True)
        lines.append(
            f"{r.policy:<18} {percentile(inter, 50):>8.2f}s {percentile(inter, 99):>8.2f}s "
            f"{percentile(batch, 50):>9.2f}s {percentile(batch, 99):>9.2f}s "
            f"{r.loads_per_hour:>13.0f} {r.preloads:>9d} {r.utilisation:>6.1%} "
            f"{r.loading:>8.1%} {r.cached:>7.1%} {r.affinity_hits:>9d} "
            f"{r.failed(False) + r.failed(True):>7d} {r.retried:>8d}"
        )
    return "\n".join(lines)


def summary(results: Sequence[PolicyResult]) -> str:
    config = results[0].config
    inter = sum(1 for r in results[0].requests if not r.batch)
    batch = len(results[0].requests) - inter
    return (
        f"{config.backends} backends, {len(MODELS)} models, a day in {config.day_seconds:g} "
        f"simulated s, {config.trough_rate:g}-{config.peak_rate:g} interactive req/s, "
        f"seed {config.seed}; {inter} interactive requests and {batch} batch runs "
        f"({results[0].policy}); backend {build_fleet(config.backends)[0].name} down "
        f"{config.die_hour:g}:00-{config.back_hour:g}:00"
    )


def plot(results: Sequence[PolicyResult], path: Path) -> None:
    """TTFT CDFs of interactive requests, and p99 TTFT per hour of the day."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = results[0].config
    fig, (cdf, hourly) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in results:
        values = r.ttft(False)
        n = len(values)
        cdf.plot(values, [(i + 1) / n for i in range(n)], label=r.policy)
        by_hour: list[list[float]] = [[] for _ in range(24)]
        for req in r.requests:
            if not req.batch and req.first_token is not None and not req.failed:
                hour = min(23, int(24 * req.arrival / config.day_seconds))
                by_hour[hour].append(req.first_token - req.arrival)
        hours = [h + 0.5 for h in range(24) if by_hour[h]]
        p99 = [percentile(sorted(v), 99) for v in by_hour if v]
        hourly.plot(hours, p99, marker="o", markersize=3, label=r.policy)
    cdf.set_xscale("log")
    cdf.set_xlabel("time to first token (s), interactive")
    cdf.set_ylabel("share of requests")
    cdf.grid(True, which="both", alpha=0.3)
    cdf.legend()
    hourly.axvspan(config.die_hour, config.back_hour, color="grey", alpha=0.2, label="one down")
    hourly.set_yscale("log")
    hourly.set_xlabel("hour of the simulated day")
    hourly.set_ylabel("p99 time to first token (s)")
    hourly.set_xlim(0, 24)
    hourly.grid(True, which="both", alpha=0.3)
    hourly.legend()
    fig.suptitle(summary(results), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- the agent workload (`--workload agents`) ---------------------------------------------
#
# Coding agents (Claude Code, Codex, ...) send their whole conversation every turn: a
# system prompt and tools shared by every session of one agent, then a history that grows
# with each tool result. Here: `AgentConfig.agents` agents, each with its own shared system
# prefix of `system_tokens`; sessions (Poisson) of 10-40 turns, each turn adding a tool
# result (lognormal, median 1,200 tokens) and the reply (median 250 tokens); a history
# over `max_history` is compacted (the agent starts over from its system prompt and a
# 4,000-token summary). The think time between a reply and the next turn is the tool's
# run, 1-30 s. One model, loaded everywhere.
#
# Backends (`AgentBackend`) are Ollama with `slots` parallel slots and one cached prompt per
# slot (`OLLAMA_NUM_PARALLEL`: a prompt extending a slot's goes on there; any other takes
# the least recently used slot with a copy of the longest prefix any slot shares), prompt
# evaluation at 2,000-8,000 tokens/s and decoding at 30-90 tokens/s by GPU. The policies:
#
# - `least outstanding`: the backend with the fewest requests in flight (Ollama's queue);
# - `today's affinity`: the pool ranking by expected wait (the prefix index off) and the
#   rule the gateway had before the index: a turn goes back to the backend of the
#   session's last turn while it has a free slot, else as any request;
# - `cost-based`: the pool with its prefix index, as the executor uses it;
# - `SGLang-style`: written here as a baseline after SGLang's cache-aware router: per
#   backend an approximate prefix tree of what was sent there (LRU, bounded in tokens,
#   not what the backend still caches); when the busiest and idlest backends differ by
#   more than `SGLANG_BALANCE_ABS` requests and by `SGLANG_BALANCE_REL` times, the least
#   busy; else, when the best match covers more than `SGLANG_CACHE_THRESHOLD` of the
#   prompt, the backend with the longest match; else the one with the smallest tree.

AGENT_MODEL = "qwen2.5-coder:32b"
SGLANG_BALANCE_ABS = 4
SGLANG_BALANCE_REL = 1.5
SGLANG_CACHE_THRESHOLD = 0.5
SGLANG_TREE_TOKENS = 2_000_000
AGENT_POLICIES = ("least outstanding", "today's affinity", "cost-based", "SGLang-style")


@dataclass(frozen=True)
class AgentConfig:
    backends: int = 16
    slots: int = 4
    minutes: float = 30.0
    sessions_per_minute: float = 7.0
    agents: int = 2
    system_tokens: int = 20_000
    max_history: int = 60_000
    seed: int = 29


@dataclass(frozen=True)
class AgentTurn:
    think: float
    tool_tokens: int
    out_tokens: int


@dataclass(frozen=True)
class AgentSession:
    sid: int
    start: float
    agent: int
    turns: tuple[AgentTurn, ...]


def make_agent_workload(config: AgentConfig) -> list[AgentSession]:
    rng = random.Random(config.seed)
    sessions: list[AgentSession] = []
    t, end = 0.0, config.minutes * 60
    while True:
        t += rng.expovariate(config.sessions_per_minute / 60)
        if t >= end:
            return sessions
        turns = tuple(
            AgentTurn(
                think=0.0 if i == 0 else rng.uniform(1.0, 30.0),
                tool_tokens=_lognormal_int(rng, 3000 if i == 0 else 1200, 0.8, 50, 12000),
                out_tokens=_lognormal_int(rng, 250, 0.6, 20, 1500),
            )
            for i in range(rng.randint(10, 40))
        )
        sessions.append(AgentSession(len(sessions), t, rng.randrange(config.agents), turns))


def _text(tokens: int, tag: str) -> str:
    """Text of about `tokens` tokens (4 bytes each), starting with `tag`."""
    return (tag + " " + "abc " * tokens)[: 4 * tokens]


@dataclass
class AgentRequest:
    sid: int
    agent: int
    generation: int
    """Compactions so far: a compacted history is a new prompt after the system's."""
    history: int
    """Tokens after the system prompt."""
    system: int
    out_tokens: int
    arrival: float
    chat: list[dict[str, str]]
    reply: str
    first_token: float | None = None
    backend: str | None = None
    evaluated: int = 0
    prompt: Prompt | None = None

    @property
    def tokens(self) -> int:
        return self.system + self.history

    def shared(self, other: tuple[int, int, int, int]) -> int:
        """Tokens of this prompt another (agent, sid, generation, tokens) holds."""
        agent, sid, generation, tokens = other
        if agent != self.agent:
            return 0
        if (sid, generation) != (self.sid, self.generation):
            return min(self.system, tokens)
        return min(self.tokens, tokens)


class AgentBackend:
    """Ollama with `slots` parallel slots, one cached prompt per slot (see above)."""

    def __init__(self, name: str, slots: int, prompt_rate: float, decode: float, loop: Any):
        self.name = name
        self.loop = loop
        self.slots = slots
        self.prompt_rate = prompt_rate
        self.decode = decode
        self.free = slots
        self.queue: deque[asyncio.Future[None]] = deque()
        self.cache: list[tuple[int, int, int, int]] = []
        """(agent, sid, generation, tokens) per slot, least recently used first."""
        self.outstanding = 0

    async def run(self, req: AgentRequest) -> int:
        """Run `req`; the prompt tokens evaluated."""
        self.outstanding += 1
        try:
            if self.free > 0 and not self.queue:
                self.free -= 1
            else:
                future = self.loop.create_future()
                self.queue.append(future)
                await future
            try:
                best = max((req.shared(c) for c in self.cache), default=0)
                mine = (req.agent, req.sid, req.generation, req.tokens + req.out_tokens)
                extends = [c for c in self.cache if req.shared(c) == c[3] and c[:3] == mine[:3]]
                for c in extends[:1]:
                    self.cache.remove(c)
                if not extends and len(self.cache) >= self.slots:
                    self.cache.pop(0)
                self.cache.append(mine)
                evaluated = max(1, req.tokens - best)
                await asyncio.sleep(evaluated / self.prompt_rate)
                req.first_token = self.loop.time()
                await asyncio.sleep(req.out_tokens / self.decode)
                return evaluated
            finally:
                if self.queue:
                    self.queue.popleft().set_result(None)
                else:
                    self.free += 1
        finally:
            self.outstanding -= 1


class _AgentClient:
    """What the pool's inventory refresh asks of a backend (one model, always loaded)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.on_final: Callable[[str, dict[str, Any]], None] | None = None

    async def tags(self, timeout: float | None = None) -> list[dict[str, Any]]:  # noqa: ASYNC109
        return [{"name": AGENT_MODEL}]

    async def ps(self) -> list[dict[str, Any]]:
        return [{"name": AGENT_MODEL, "expires_at": _FOREVER}]

    async def aclose(self) -> None:
        pass


class AgentSimulation:
    """One policy over the agent workload, in simulated time."""

    def __init__(self, config: AgentConfig, sessions: list[AgentSession], policy: str) -> None:
        self.config, self.sessions, self.policy = config, sessions, policy
        self.loop = VirtualTimeLoop(horizon=config.minutes * 60 * 4 + 3600)
        rng = random.Random(config.seed + 1)
        self.backends: dict[str, AgentBackend] = {}
        specs = []
        for i in range(config.backends):
            name = f"gpu-{i:02d}"
            speed = rng.uniform(0.0, 1.0)  # GPUs from slow to fast
            self.backends[name] = AgentBackend(
                name, config.slots, 2000 + 6000 * speed, 30 + 60 * speed, self.loop
            )
            specs.append(parse_backend(f"{name}=http://{name}.sim:11434;max={config.slots}"))
        self.pool = BackendPool(specs, prefix_routing=policy == "cost-based", inventory_ttl=60)
        for state in self.pool.states:
            client = _AgentClient(state.spec.url)
            client.on_final = state.client.on_final
            state.client = client  # type: ignore[assignment]
        self.systems = [
            _text(config.system_tokens, f"agent {a} system") for a in range(config.agents)
        ]
        self.requests: list[AgentRequest] = []
        self.homes: dict[int, str] = {}
        self.trees: dict[str, OrderedDict[tuple[int, int, int], int]] = {
            name: OrderedDict() for name in self.backends
        }
        self.turn = 0

    # -- the policies --------------------------------------------------------------------

    async def serve(self, req: AgentRequest) -> None:
        self.requests.append(req)
        if self.policy == "least outstanding":
            names = list(self.backends)
            i = self.turn % len(names)
            self.turn += 1
            name = min(names[i:] + names[:i], key=lambda n: self.backends[n].outstanding)
            await self._direct(req, name)
        elif self.policy == "SGLang-style":
            await self._direct(req, self._sglang(req))
        else:
            await self._pooled(req)

    async def _direct(self, req: AgentRequest, name: str) -> None:
        req.backend = name
        req.evaluated = await self.backends[name].run(req)

    async def _pooled(self, req: AgentRequest) -> None:
        pool = self.pool
        if self.policy == "cost-based":
            req.prompt = pool.chat_prompt(AGENT_MODEL, req.chat)
        ranked = await pool.candidates(AGENT_MODEL, prompt=req.prompt)
        if self.policy == "today's affinity":
            home = self.homes.get(req.sid)
            for i, state in enumerate(ranked):  # the yes/no rule the index replaced
                if state.spec.name == home and pool._has_free_slot(state, AGENT_MODEL, False):
                    ranked.insert(0, ranked.pop(i))
                    break
        state = ranked[0]
        backend = self.backends[state.spec.name]
        async with pool.lease(state, AGENT_MODEL, prompt=req.prompt):
            req.backend = state.spec.name
            req.evaluated = await backend.run(req)
            final = {
                "done": True,
                "load_duration": 0,
                "prompt_eval_count": req.evaluated,
                "prompt_eval_duration": int(req.evaluated / backend.prompt_rate * 1e9),
            }
            if state.client.on_final is not None:
                state.client.on_final(AGENT_MODEL, final)
        pool.served(req.prompt, state, reply=req.reply, final=final)
        self.homes[req.sid] = state.spec.name

    def _sglang(self, req: AgentRequest) -> str:
        loads = {n: b.outstanding for n, b in self.backends.items()}
        busiest, idlest = max(loads.values()), min(loads.values())
        if busiest - idlest > SGLANG_BALANCE_ABS and busiest > SGLANG_BALANCE_REL * idlest:
            name = min(loads, key=lambda n: loads[n])
        else:
            matches = {
                n: max((req.shared((*k, t)) for k, t in tree.items()), default=0)
                for n, tree in self.trees.items()
            }
            best = max(matches, key=lambda n: (matches[n], -loads[n]))
            if matches[best] > SGLANG_CACHE_THRESHOLD * req.tokens:
                name = best
            else:
                name = min(self.trees, key=lambda n: (sum(self.trees[n].values()), loads[n]))
        tree = self.trees[name]
        key = (req.agent, req.sid, req.generation)
        tree[key] = req.tokens + req.out_tokens
        tree.move_to_end(key)
        while sum(tree.values()) > SGLANG_TREE_TOKENS:
            tree.popitem(last=False)
        return name

    # -- sessions ------------------------------------------------------------------------

    async def session(self, s: AgentSession) -> None:
        system = self.systems[s.agent]
        chat = [{"role": "system", "content": system}]
        history, generation = 0, 0
        for i, turn in enumerate(s.turns):
            if turn.think:
                await asyncio.sleep(turn.think)
            if history + turn.tool_tokens > self.config.max_history:  # compaction
                generation += 1
                summary = _text(4000, f"summary {s.sid}.{generation}")
                chat, history = [{"role": "system", "content": system}], 0
                chat.append({"role": "user", "content": summary})
                history = 4000
            message = _text(turn.tool_tokens, f"tool {s.sid}.{i}")
            chat = [*chat, {"role": "user", "content": message}]
            history += turn.tool_tokens
            req = AgentRequest(
                s.sid,
                s.agent,
                generation,
                history,
                self.config.system_tokens,
                turn.out_tokens,
                self.loop.time(),
                chat,
                _text(turn.out_tokens, f"reply {s.sid}.{i}"),
            )
            await self.serve(req)
            chat = [*chat, {"role": "assistant", "content": req.reply}]
            history += turn.out_tokens

    async def main(self) -> None:
        await self.pool.refresh_stale(force=True)
        tasks = []
        for s in self.sessions:
            await asyncio.sleep(max(0.0, s.start - self.loop.time()))
            tasks.append(self.loop.create_task(self.session(s)))
        await asyncio.gather(*tasks)

    def run(self) -> AgentResult:
        wall = time.perf_counter()
        with simulated_clock(self.loop):
            try:
                self.loop.run_until_complete(self.main())
            finally:
                self.loop.close()
        return AgentResult(self.policy, self.requests, self.loop.time(), time.perf_counter() - wall)


@dataclass
class AgentResult:
    policy: str
    requests: list[AgentRequest]
    sim_seconds: float
    wall_seconds: float

    def ttft(self) -> list[float]:
        return sorted(r.first_token - r.arrival for r in self.requests if r.first_token)

    @property
    def evaluated_per_hour(self) -> float:
        return sum(r.evaluated for r in self.requests) / (self.sim_seconds / 3600)

    @property
    def cached(self) -> float:
        """Share of all prompt tokens that were cached where they ran."""
        total = sum(r.tokens for r in self.requests)
        return 1 - sum(r.evaluated for r in self.requests) / total if total else math.nan


def agent_table(results: Sequence[AgentResult]) -> str:
    lines = [
        f"{'policy':<18} {'TTFT p50':>9} {'TTFT p90':>9} {'TTFT p99':>9} "
        f"{'evaluated tokens/h':>19} {'cached':>7} {'turns':>6}"
    ]
    for r in results:
        ttft = r.ttft()
        lines.append(
            f"{r.policy:<18} {percentile(ttft, 50):>8.2f}s {percentile(ttft, 90):>8.2f}s "
            f"{percentile(ttft, 99):>8.2f}s {r.evaluated_per_hour / 1e6:>17.1f} M "
            f"{r.cached:>7.1%} {len(ttft):>6d}"
        )
    return "\n".join(lines)


def agent_plot(results: Sequence[AgentResult], config: AgentConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cdf, work) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in results:
        values = r.ttft()
        cdf.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=r.policy)
    cdf.set_xscale("log")
    cdf.set_xlabel("time to first token (s), agent turns")
    cdf.set_ylabel("share of turns")
    cdf.grid(True, which="both", alpha=0.3)
    cdf.legend()
    work.bar([r.policy for r in results], [r.evaluated_per_hour / 1e6 for r in results])
    work.set_ylabel("prompt tokens evaluated per hour (millions)")
    work.tick_params(axis="x", labelsize=8)
    fig.suptitle(
        f"{config.backends} backends x {config.slots} slots, {config.agents} agents with "
        f"{config.system_tokens} shared system tokens, {config.sessions_per_minute:g} "
        f"sessions/min over {config.minutes:g} min, seed {config.seed}",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def agent_main(args: argparse.Namespace) -> None:
    config = AgentConfig(
        backends=args.backends if args.backends != Config.backends else AgentConfig.backends,
        minutes=args.minutes,
        sessions_per_minute=args.sessions_per_minute,
        seed=args.seed if args.seed != Config.seed else AgentConfig.seed,
    )
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if policies == list(POLICIES):
        policies = list(AGENT_POLICIES)
    unknown = [p for p in policies if p not in AGENT_POLICIES]
    if unknown:
        raise SystemExit(f"unknown agent policies: {', '.join(unknown)}")
    sessions = make_agent_workload(config)
    started = time.perf_counter()
    results = [AgentSimulation(config, sessions, p).run() for p in policies]
    print(
        f"{config.backends} backends x {config.slots} slots, {len(sessions)} sessions of "
        f"{config.agents} agents ({config.system_tokens} shared system tokens, histories "
        f"to {config.max_history}), {config.minutes:g} simulated min, seed {config.seed}"
    )
    print(agent_table(results))
    plot = (
        args.plot
        if args.plot != ROOT / "bench" / "fleet_sim.png"
        else ROOT / "bench" / "fleet_sim_agents.png"
    )
    agent_plot(results, config, plot)
    walls = ", ".join(f"{r.policy} {r.wall_seconds:.1f}" for r in results)
    print(f"plot: {os.path.relpath(plot)}; wall {time.perf_counter() - started:.1f} s ({walls})")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, default=Config.seed)
    parser.add_argument("--plot", type=Path, default=ROOT / "bench" / "fleet_sim.png")
    parser.add_argument("--backends", type=int, default=Config.backends)
    parser.add_argument("--day-seconds", type=float, default=Config.day_seconds)
    parser.add_argument("--peak-rate", type=float, default=Config.peak_rate)
    parser.add_argument(
        "--policies",
        default=",".join(POLICIES),
        help=f"comma-separated, of: {', '.join(POLICY_TYPES)} (default: the first three)",
    )
    parser.add_argument("--workload", choices=("day", "agents"), default="day")
    parser.add_argument("--minutes", type=float, default=AgentConfig.minutes)
    parser.add_argument(
        "--sessions-per-minute", type=float, default=AgentConfig.sessions_per_minute
    )
    args = parser.parse_args(argv)
    if args.workload == "agents":
        agent_main(args)
        return
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICY_TYPES]
    if unknown or not policies:
        parser.error(f"unknown policies: {', '.join(unknown) or '(none given)'}")
    config = Config(
        backends=args.backends,
        day_seconds=args.day_seconds,
        peak_rate=args.peak_rate,
        seed=args.seed,
    )
    started = time.perf_counter()
    results = simulate(config, policies)
    print(summary(results))
    print(table(results))
    plot(results, args.plot)
    walls = ", ".join(f"{r.policy} {r.wall_seconds:.1f}" for r in results)
    shown = os.path.relpath(args.plot) if args.plot.is_absolute() else args.plot
    print(f"plot: {shown}; wall {time.perf_counter() - started:.1f} s ({walls})")


if __name__ == "__main__":
    main()
