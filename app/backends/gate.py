"""Admission to one backend's request slots: interactive requests before batch runs.

Two classes of request share a backend's `max` slots. Runs of jobs (batches, benchmarks,
comparisons) are `batch`: their code path marks its context with `batch_runs` (see
`as_batch`); everything else is interactive. A freed slot goes to the first waiting
interactive request that fits, and only then to the first batch run that fits; while an
interactive request waits, batch runs take at most `batch_share` of the slots. With
`per_model`, at most that many runs of one model hold slots at once: a run of a model at
its limit waits while runs of other models may take the free slots.

A waiter is granted its slot when it is freed (no barging: a newcomer takes a slot at
once only when no one waiting could have it). Counts are per event loop, as the gate is.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import Counter
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["SlotGate", "as_batch", "batch_runs"]

batch_runs: ContextVar[bool] = ContextVar("batch_runs", default=False)
"""True in the context of a job's runs (a batch, a benchmark, a comparison)."""


@contextlib.contextmanager
def as_batch() -> Iterator[None]:
    """Mark the runs started in this block (and the tasks it creates) as batch runs."""
    token = batch_runs.set(True)
    try:
        yield
    finally:
        batch_runs.reset(token)


@dataclass
class _Waiter:
    model: str | None
    batch: bool
    future: asyncio.Future[None]


class SlotGate:
    """`limit` slots (None: no limit), at most `per_model` of them for one model, granted
    interactive first (see the module docstring)."""

    def __init__(self, limit: int | None, per_model: int | None, batch_share: float) -> None:
        self.limit = limit
        self.per_model = per_model
        self.batch_slots = None if limit is None else math.floor(batch_share * limit)
        """Most slots batch runs may take while an interactive request waits."""
        self.running = 0
        self.running_batch = 0
        self.by_model: Counter[str] = Counter()
        self._waiters: list[_Waiter] = []

    def fits(self, model: str | None, batch: bool) -> bool:
        """A run of `model` (of its class) may take a slot now."""
        if self.limit is not None and self.running >= self.limit:
            return False
        per_model = self.per_model
        if per_model is not None and model is not None and self.by_model[model] >= per_model:
            return False
        if batch and self.batch_slots is not None and any(not w.batch for w in self._waiters):
            return self.running_batch < self.batch_slots
        return True

    async def acquire(self, model: str | None, batch: bool) -> None:
        """Take a slot, waiting for one when none fits now (cancellable)."""
        if self.fits(model, batch):
            self._take(model, batch)
            return
        waiter = _Waiter(model, batch, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await waiter.future
        except BaseException:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(model, batch)  # granted as it gave up: pass it on
            else:
                self._waiters.remove(waiter)
                self._wake()  # an interactive waiter gone may let a batch run in
            raise

    def release(self, model: str | None, batch: bool) -> None:
        self.running -= 1
        if batch:
            self.running_batch -= 1
        if model is not None:
            self.by_model[model] -= 1
            if not self.by_model[model]:
                del self.by_model[model]
        self._wake()

    def _take(self, model: str | None, batch: bool) -> None:
        self.running += 1
        if batch:
            self.running_batch += 1
        if model is not None:
            self.by_model[model] += 1

    def _wake(self) -> None:
        """Grant every waiter that fits: interactive ones first, each class in order."""
        for batch in (False, True):
            for waiter in [w for w in self._waiters if w.batch is batch]:
                if waiter.future.done() or not self.fits(waiter.model, batch):
                    continue
                self._waiters.remove(waiter)
                self._take(waiter.model, batch)
                waiter.future.set_result(None)
