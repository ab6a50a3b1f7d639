"""What each backend carried over the last minutes, as this process saw it.

`BackendPool.watch` takes a sample every `every` seconds: per backend, the requests running
and waiting at that moment and the requests that finished since the sample before. The
last `keep` seconds are kept (a bounded ring, a few kB). The web console's load chart reads
them (`GET /gateway/backends/history`), so it shows the minutes before the page opened
too. Like the circuit and queue figures of `/gateway/backends`, each process and replica
keeps its own: load is per process, not shared state.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from app.backends.state import BackendState

__all__ = ["LoadHistory", "LoadSample", "SampledLoad"]


@dataclass(frozen=True, slots=True)
class SampledLoad:
    running: int
    queued: int
    finished: int
    """Requests that finished since the previous sample."""


@dataclass(frozen=True, slots=True)
class LoadSample:
    at: float
    """`time.time()` of the sample."""
    seconds: float
    """Since the previous sample."""
    backends: dict[str, SampledLoad]


class LoadHistory:
    def __init__(self, every: float = 5.0, keep: float = 900.0) -> None:
        self.every = every
        self.keep = keep
        self._samples: deque[LoadSample] = deque(maxlen=max(2, int(keep / every) + 1))
        self._finished: dict[str, int] = {}
        self._last: float | None = None

    def sample(self, states: Iterable[BackendState], now: float | None = None) -> LoadSample:
        now = time.time() if now is None else now
        backends: dict[str, SampledLoad] = {}
        finished: dict[str, int] = {}
        for state in states:
            name = state.spec.name
            finished[name] = state.finished
            before = self._finished.get(name, state.finished)
            backends[name] = SampledLoad(
                state.outstanding, state.waiting, max(0, state.finished - before)
            )
        self._finished = finished  # backends gone from the pool are forgotten
        seconds = self.every if self._last is None else max(now - self._last, 1e-3)
        self._last = now
        sample = LoadSample(now, seconds, backends)
        self._samples.append(sample)
        return sample

    def since(self, seconds: float) -> list[LoadSample]:
        """The samples of the last `seconds`, oldest first."""
        start = time.time() - seconds
        return [s for s in self._samples if s.at >= start]
