"""`BackendState`: what a pool knows of one backend — health, inventory, load and queues,
and what its runs took — and the expected wait a request would have there.

Expected wait (what `BackendPool.candidates` ranks by, smallest first): the requests ahead
(in flight, and waiting for a slot: every waiting one for a batch run, the interactive
ones for an interactive request) over the backend's slots, times the mean time one of
its runs holds a slot, over its weight; with `max_per_model`, the same for the model's own
slots, whichever is longer; plus the model's cold-load time when the backend does not hold
it loaded. A backend without `max` counts as `UNLIMITED_SLOTS` slots (Ollama runs a few
requests at once and queues the rest itself). So a long queue on a warm backend loses to a
cold load elsewhere, and requests waiting for slots spread over equal backends. The time
one run holds a slot is the mean over the models of the runs ahead (each model's own
running mean), so slots held by another model's long runs count as long.

It also keeps the backend's observed prompt evaluation time per token (Ollama's
`prompt_eval_duration` over `prompt_eval_count`, per model) and its prompt cache as the
prefix index models it (`prefixes`, see `app.backends.prefix`): routing adds the prompt
tokens not cached here, times that rate, to the expected wait (`BackendPool.candidates`).

Runs the index placed carry their own expected work (`work`: their uncached prompt tokens
times the rate, plus the model's decode time here, Ollama's `eval_duration`). While every
run ahead carries one, the wait is the work still ahead over the slots: what is left of
each run in flight and the work of each waiting one. So a queue of runs that find their
prompts cached is short behind long cold ones, where a mean time per run (dominated by
the cold ones) would send the next run away to evaluate its whole prompt elsewhere.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.backends.client import OllamaClient
from app.backends.gate import SlotGate
from app.backends.prefix import BackendPrefixes
from app.backends.spec import BackendSpec

__all__ = [
    "DEFAULT_LOAD_SECONDS",
    "DEFAULT_PROMPT_SECONDS_PER_TOKEN",
    "DEFAULT_SERVICE_SECONDS",
    "UNLIMITED_SLOTS",
    "BackendState",
]

DEFAULT_LOAD_SECONDS = 5.0
"""A model's cold-load time on a backend before one has been seen there."""
DEFAULT_SERVICE_SECONDS = 1.0
"""The time a run holds a slot before one has been seen on the backend."""
DEFAULT_PROMPT_SECONDS_PER_TOKEN = 0.001
"""Prompt evaluation time per token before any backend reported one for a model (1,000
tokens/s: a modest GPU; CPUs are slower, large GPUs 2-8 times faster)."""
PROMPT_SAMPLE_TOKENS = 32
"""Runs that evaluated fewer prompt tokens than this do not teach the rate (fixed costs
dominate them)."""
UNLIMITED_SLOTS = 4
"""The slots a backend without `max` counts as, for the expected wait."""
SMOOTHING = 0.3
"""Weight of the newest sample in the running means of load and service times."""

ModelKey = Callable[[str], str]


def _mean(old: float | None, sample: float) -> float:
    return sample if old is None else old + SMOOTHING * (sample - old)


def _ms(seconds: dict[str, float]) -> dict[str, float]:
    return {model: round(value * 1000, 1) for model, value in sorted(seconds.items())}


@dataclass
class BackendState:
    """What the pool knows of one backend."""

    spec: BackendSpec
    client: OllamaClient
    source: str = "settings"
    """Where it comes from: `settings` (the start-up list) or `api` (added at run time)."""
    outstanding: int = 0
    outstanding_batch: int = 0
    finished: int = 0
    """Runs that ended here, counted since this process started (the load history's)."""
    waiting: int = 0
    """Requests waiting for a slot (interactive and batch)."""
    waiting_batch: int = 0
    in_flight: Counter[str] = field(default_factory=Counter)
    """Runs in flight per model (by its key)."""
    waiting_by_model: Counter[str] = field(default_factory=Counter)
    cold_runs: Counter[str] = field(default_factory=Counter)
    """Runs in flight per model that started while the model was not loaded here."""
    failures: int = 0
    down_until: float = 0.0
    last_error: str | None = None
    models: list[str] | None = None
    loaded: list[str] = field(default_factory=list)
    loaded_until: dict[str, float] = field(default_factory=dict)
    """When each loaded model (by its key) unloads, in seconds since the epoch (`/api/ps`)."""
    warm: list[str] = field(default_factory=list)
    """The models the gateway keeps loaded here (GATEWAY_KEEP_WARM, `app.backends.warm`)."""
    inventory_at: float = 0.0
    waits: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    """Recent queue waits in seconds (requests that had to wait for a slot)."""
    load_seconds: dict[str, float] = field(default_factory=dict)
    """Running mean of each model's cold-load time here (Ollama's `load_duration`)."""
    service_seconds: dict[str, float] = field(default_factory=dict)
    """Running mean of the time a run of each model held a slot here."""
    service_any: float | None = None
    """The same over every model."""
    token_set: bool = False
    """Its `token_env` variable was set when its client was made."""
    prompt_rate: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Per model, running means of the prompt tokens a run evaluated and the seconds it
    took (their ratio is the time per token, weighted towards long prompts)."""
    prefixes: BackendPrefixes = field(default_factory=BackendPrefixes)
    """What its prompt cache holds, as the prefix index models it."""
    _gates: dict[asyncio.AbstractEventLoop, SlotGate] = field(default_factory=dict)
    decode_seconds: dict[str, float] = field(default_factory=dict)
    """Running mean of each model's decode time per run here (Ollama's `eval_duration`)."""
    _work_running: dict[int, tuple[float, str, float]] = field(default_factory=dict)
    """The runs in flight that carry their expected prompt time: (seconds, model, start)
    by lease (their decode time is the model's as known when asked)."""
    _work_waiting: float = 0.0
    """The expected prompt time of the waiting runs that carry one."""
    _work_waiting_batch: float = 0.0
    _work_waiting_runs: Counter[str] = field(default_factory=Counter)
    """Waiting runs that carry their expected prompt time, per model."""
    _work_waiting_runs_batch: Counter[str] = field(default_factory=Counter)
    _plain_ahead: int = 0
    """Runs in flight or waiting that carry no expected work (the mean-time rule then)."""
    _plain_waiting_batch: int = 0
    _started_sum: float = 0.0
    """Sum of the start times of the runs in flight (their mean age is a lower bound on
    how long a run takes here: finished short runs must not hide long ones running)."""

    def __post_init__(self) -> None:
        spec = self.spec
        self.load_floor = 1 / ((spec.max_concurrency or UNLIMITED_SLOTS) * spec.weight)
        """The least load `expected_wait` gives here: nothing ahead (a ranking's bound)."""

    def in_flight_age(self) -> float:
        """Mean seconds the runs now in flight have been running (0 when none)."""
        if self.outstanding <= 0:
            return 0.0
        return max(0.0, time.monotonic() - self._started_sum / self.outstanding)

    @property
    def available(self) -> bool:
        return time.monotonic() >= self.down_until

    def gate(self, batch_share: float) -> SlotGate | None:
        """This loop's gate, or None when the backend has no limit."""
        spec = self.spec
        if spec.max_concurrency is None and spec.max_per_model is None:
            return None
        loop = asyncio.get_running_loop()
        gate = self._gates.get(loop)
        if gate is None:
            gate = SlotGate(spec.max_concurrency, spec.max_per_model, batch_share)
            self._gates[loop] = gate
        return gate

    # -- bookkeeping (called by the pool's lease) -------------------------------------

    def count_waiting(
        self, model: str | None, batch: bool, step: int, work: float | None = None
    ) -> None:
        self.waiting += step
        self.waiting_batch += step if batch else 0
        if work is None or model is None:
            self._plain_ahead += step
            self._plain_waiting_batch += step if batch else 0
        else:
            self._work_waiting += step * work
            self._work_waiting_runs[model] += step
            if batch:
                self._work_waiting_batch += step * work
                self._work_waiting_runs_batch[model] += step
        if model is not None:
            self.waiting_by_model[model] += step
            if self.waiting_by_model[model] <= 0:
                del self.waiting_by_model[model]

    def count_running(
        self,
        model: str | None,
        batch: bool,
        cold: bool,
        step: int,
        *,
        started: float = 0.0,
        work: tuple[int, float] | None = None,
    ) -> None:
        """One run more (`step` 1) or fewer (-1); `started` is its `time.monotonic()` start,
        the same both times; `work`: its lease's number and expected prompt time, if it has
        one."""
        if work is None or model is None:
            self._plain_ahead += step
        elif step > 0:
            self._work_running[work[0]] = (work[1], model, started)
        else:
            self._work_running.pop(work[0], None)
        self.outstanding += step
        if step < 0:
            self.finished -= step
        self._started_sum += step * started
        self.outstanding_batch += step if batch else 0
        if model is not None:
            for counter, counted in ((self.in_flight, True), (self.cold_runs, cold)):
                if counted:
                    counter[model] += step
                    if counter[model] <= 0:
                        del counter[model]

    def record_service(self, model: str, seconds: float) -> None:
        self.service_seconds[model] = _mean(self.service_seconds.get(model), seconds)
        self.service_any = _mean(self.service_any, seconds)

    def record_decode(self, model: str, seconds: float) -> None:
        self.decode_seconds[model] = _mean(self.decode_seconds.get(model), seconds)

    def decode_time(self, model: str) -> float:
        """The model's decode time per run here (its whole run time until one was seen): a
        run holds a slot for its prompt time plus this."""
        decode = self.decode_seconds.get(model)
        if decode is None:
            decode = self.service_seconds.get(model, self.service_any or DEFAULT_SERVICE_SECONDS)
        return decode

    def record_load(self, model: str, seconds: float) -> None:
        self.load_seconds[model] = _mean(self.load_seconds.get(model), seconds)

    def record_prompt(self, model: str, tokens: float, seconds: float) -> None:
        """A run of `model` evaluated `tokens` prompt tokens in `seconds`."""
        if tokens < PROMPT_SAMPLE_TOKENS or seconds <= 0:
            return
        old = self.prompt_rate.get(model)
        if old is None:
            self.prompt_rate[model] = (tokens, seconds)
        else:
            self.prompt_rate[model] = (_mean(old[0], tokens), _mean(old[1], seconds))

    def seconds_per_token(self, model: str | None) -> float | None:
        """Observed prompt evaluation time per token of `model` here (None: not seen)."""
        rate = self.prompt_rate.get(model) if model is not None else None
        return rate[1] / rate[0] if rate is not None else None

    # -- ranking ---------------------------------------------------------------------

    def expected_wait(
        self, model: str | None, *, loaded: bool, batch: bool, default_load: float
    ) -> tuple[float, float]:
        """Seconds until a request for `model` (a key) would start producing here, and,
        to break ties, its load per slot and weight (see the module docstring)."""
        spec = self.spec
        slots = spec.max_concurrency or UNLIMITED_SLOTS
        any_model = self.service_any or DEFAULT_SERVICE_SECONDS
        service = any_model
        if model is not None:
            service = self.service_seconds.get(model, service)
        # Runs in flight for longer than the mean of the finished ones (short replies
        # then a burst of long ones) show the runs here take at least that long.
        age = self.in_flight_age()
        service = max(service, age)
        waiting = self.waiting if batch else self.waiting - self.waiting_batch
        ahead = self.outstanding + waiting
        wait = 0.0
        if ahead + 1 > slots:
            plain = self._plain_ahead - (0 if batch else self._plain_waiting_batch)
            if plain <= 0:  # every run ahead carries its work: what is left of it
                wait = self._work_ahead(batch) / slots
            else:
                wait = (ahead + 1 - slots) / slots * max(self._service_ahead(any_model), age)
        if model is not None and spec.max_per_model is not None:
            mine = self.in_flight[model] + self.waiting_by_model[model]
            per_model = min(spec.max_per_model, slots)
            wait = max(wait, max(0, mine + 1 - per_model) / per_model * service)
        wait /= spec.weight
        if model is not None and not loaded:
            wait += self.load_seconds.get(model, default_load)
        return wait, (ahead + 1) / (slots * spec.weight)

    def _work_ahead(self, batch: bool) -> float:
        """Seconds of work ahead: what is left of each run in flight (its prompt time and
        its model's decode time as known now, less its age) and the waiting runs' prompt
        and decode times (the batch runs only for a batch run)."""
        now = time.monotonic()
        left = 0.0
        for prompt, model, started in self._work_running.values():
            rest = prompt + self.decode_time(model) - (now - started)
            if rest > 0.0:
                left += rest
        waiting = self._work_waiting - (0.0 if batch else self._work_waiting_batch)
        batch_runs = self._work_waiting_runs_batch
        for model, runs in self._work_waiting_runs.items():
            if not batch:
                runs -= batch_runs.get(model, 0)
            if runs > 0:
                waiting += runs * self.decode_time(model)
        return left + max(0.0, waiting)

    def _service_ahead(self, default: float) -> float:
        """The mean time a slot is held by the runs in flight and waiting here (each by its
        model's running mean)."""
        counts = self.in_flight + self.waiting_by_model
        total = sum(counts.values())
        if total <= 0:
            return default
        times = self.service_seconds
        return sum(n * times.get(m, default) for m, n in counts.items()) / total

    # -- status ----------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "name": spec.name,
            "url": spec.url,
            "source": self.source,
            "tags": list(spec.tags),
            "weight": spec.weight,
            "max_concurrency": spec.max_concurrency,
            "max_per_model": spec.max_per_model,
            "token_env": spec.token_env,
            "token_set": self.token_set,
            "circuit": "closed" if self.available else "open",
            "outstanding": self.outstanding,
            "outstanding_batch": self.outstanding_batch,
            "queued": self.waiting,
            "queued_batch": self.waiting_batch,
            "in_flight": dict(sorted(self.in_flight.items())),
            "queued_by_model": dict(sorted(self.waiting_by_model.items())),
            "queue_wait_ms_mean": round(sum(self.waits) / len(self.waits) * 1000, 3)
            if self.waits
            else None,
            "queue_wait_ms_max": round(max(self.waits) * 1000, 3) if self.waits else None,
            "load_ms": _ms(self.load_seconds),
            "run_ms": _ms(self.service_seconds),
            "prompt_tokens_per_s": {
                model: round(tokens / seconds, 1)
                for model, (tokens, seconds) in sorted(self.prompt_rate.items())
            },
            "prefix_entries": len(self.prefixes),
            "consecutive_failures": self.failures,
            "last_error": self.last_error,
            "models": self.models,
            "loaded": self.loaded,
            "warm": self.warm,
        }
