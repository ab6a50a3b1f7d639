"""`BackendState`: what a pool knows of one backend — health, inventory, load and queues,
and what its runs took — and the expected wait a request would have there.

Expected wait (what `BackendPool.candidates` ranks by, smallest first): the requests ahead
(in flight, and waiting for a slot: every waiting one for a batch run, the interactive
ones for an interactive request) over the backend's slots, times the mean time one of
its runs holds a slot, over its weight; with `max_per_model`, the same for the model's own
slots, whichever is longer; plus the model's cold-load time when the backend does not hold
it loaded. A backend without `max` counts as `UNLIMITED_SLOTS` slots (Ollama runs a few
requests at once and queues the rest itself). So a long queue on a warm backend loses to a
cold load elsewhere, and requests waiting for slots spread over equal backends.
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
from app.backends.spec import BackendSpec

__all__ = [
    "DEFAULT_LOAD_SECONDS",
    "DEFAULT_SERVICE_SECONDS",
    "UNLIMITED_SLOTS",
    "BackendState",
]

DEFAULT_LOAD_SECONDS = 5.0
"""A model's cold-load time on a backend before one has been seen there."""
DEFAULT_SERVICE_SECONDS = 1.0
"""The time a run holds a slot before one has been seen on the backend."""
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
    _gates: dict[asyncio.AbstractEventLoop, SlotGate] = field(default_factory=dict)
    _started_sum: float = 0.0
    """Sum of the start times of the runs in flight (their mean age is a lower bound on
    how long a run takes here: finished short runs must not hide long ones running)."""

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

    def count_waiting(self, model: str | None, batch: bool, step: int) -> None:
        self.waiting += step
        self.waiting_batch += step if batch else 0
        if model is not None:
            self.waiting_by_model[model] += step
            if self.waiting_by_model[model] <= 0:
                del self.waiting_by_model[model]

    def count_running(
        self, model: str | None, batch: bool, cold: bool, step: int, *, started: float = 0.0
    ) -> None:
        """One run more (`step` 1) or fewer (-1); `started` is its `time.monotonic()` start,
        the same both times."""
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

    def record_load(self, model: str, seconds: float) -> None:
        self.load_seconds[model] = _mean(self.load_seconds.get(model), seconds)

    # -- ranking ---------------------------------------------------------------------

    def expected_wait(
        self, model: str | None, *, loaded: bool, batch: bool, default_load: float
    ) -> tuple[float, float]:
        """Seconds until a request for `model` (a key) would start producing here, and,
        to break ties, its load per slot and weight (see the module docstring)."""
        spec = self.spec
        slots = spec.max_concurrency or UNLIMITED_SLOTS
        service = self.service_any or DEFAULT_SERVICE_SECONDS
        if model is not None:
            service = self.service_seconds.get(model, service)
        # Runs in flight for longer than the mean of the finished ones (short replies
        # then a burst of long ones) show the runs here take at least that long.
        service = max(service, self.in_flight_age())
        waiting = self.waiting if batch else self.waiting - self.waiting_batch
        ahead = self.outstanding + waiting
        wait = max(0, ahead + 1 - slots) / slots * service
        if model is not None and spec.max_per_model is not None:
            mine = self.in_flight[model] + self.waiting_by_model[model]
            per_model = min(spec.max_per_model, slots)
            wait = max(wait, max(0, mine + 1 - per_model) / per_model * service)
        wait /= spec.weight
        if model is not None and not loaded:
            wait += self.load_seconds.get(model, default_load)
        return wait, (ahead + 1) / (slots * spec.weight)

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
            "consecutive_failures": self.failures,
            "last_error": self.last_error,
            "models": self.models,
            "loaded": self.loaded,
            "warm": self.warm,
        }
