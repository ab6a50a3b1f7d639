"""Warm models (GATEWAY_KEEP_WARM): models kept loaded on a number of backends.

Each health round (`BackendPool.watch`, right after the backends' `/api/tags` and
`/api/ps` were read) `KeepWarm.step` decides, for each model, the backends that keep it
loaded: those where it is loaded already first, then (sticking to the backends chosen
before) the least busy others that have it installed; only healthy backends its placement
rule allows (`app.backends.placement`). Where it is not loaded, or its `expires_at` is near
(a request with Ollama's default `keep_alive` shortened it), it is loaded: an empty
`POST /api/generate` with `keep_alive: -1` (Ollama answers `done_reason: load`). A model
evicted is so loaded again in the next round. The loads run in the background, one at a
time per backend and model, so a slow load does not hold up the health checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

from app.backends.errors import BackendError
from app.backends.placement import Placement
from app.backends.state import BackendState

__all__ = ["WARM_KEEP_ALIVE", "KeepWarm", "expiry_of"]

logger = logging.getLogger(__name__)

WARM_KEEP_ALIVE = -1
"""The `keep_alive` of a warm load: until evicted or unloaded."""

REFRESH_BEFORE = 600.0
"""Seconds before its `expires_at` a warm model is loaded again (its keep-alive renewed)."""


class KeepWarm:
    """Models to keep loaded, and how many backends each (see the module docstring)."""

    def __init__(self, wanted: Mapping[str, int]) -> None:
        self.wanted = {model: count for model, count in wanted.items() if count > 0}
        self._loads: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._short: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self.wanted)

    def step(
        self,
        states: Sequence[BackendState],
        placement: Placement,
        model_key: Callable[[str], str],
        timeout: float,
    ) -> None:
        """Choose each model's backends, note them (`BackendState.warm`), start the loads."""
        chosen: dict[int, list[str]] = {id(state): [] for state in states}
        for model, count in self.wanted.items():
            key = model_key(model)
            rule = placement.rule_for(key, model_key)
            usable = [
                s
                for s in states
                if s.available
                and s.models is not None
                and (rule is None or rule.allows(s.spec))
                and _has(s.models, key, model_key)
            ]
            loaded = [s for s in usable if _has(s.loaded, key, model_key)]
            others = sorted(
                (s for s in usable if s not in loaded),
                key=lambda s: (model not in s.warm, s.outstanding + s.waiting, s.spec.name),
            )
            keep = (loaded + others)[:count]
            self._note_short(model, count, len(keep), rule is not None)
            for state in keep:
                chosen[id(state)].append(model)
                if state not in loaded or _expiring(state, key):
                    self._load(state, model, key, timeout)
        for state in states:
            state.warm = chosen[id(state)]

    def _note_short(self, model: str, wanted: int, found: int, placed: bool) -> None:
        if found >= wanted:
            self._short.discard(model)
            return
        if model not in self._short:
            self._short.add(model)
            where = "healthy backends its placement rule allows" if placed else "healthy backends"
            logger.warning(
                "keep warm: %s on %d backends wanted, but only %d %s have it installed",
                model,
                wanted,
                found,
                where,
            )

    def _load(self, state: BackendState, model: str, key: str, timeout: float) -> None:
        slot = (state.spec.name, key)
        running = self._loads.get(slot)
        if running is not None and not running.done():
            return
        task = asyncio.create_task(_load(state, model, key, timeout), name=f"warm-{slot}")
        self._loads[slot] = task
        task.add_done_callback(lambda done: self._loads.pop(slot, None) if done is task else None)

    async def aclose(self) -> None:
        """Cancel the loads under way (those of the calling event loop)."""
        loop = asyncio.get_running_loop()
        tasks = [task for task in self._loads.values() if task.get_loop() is loop]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _load(state: BackendState, model: str, key: str, seconds: float) -> None:
    body = {"model": model, "keep_alive": WARM_KEEP_ALIVE}
    try:
        await state.client.generate(body, timeout=seconds)
    except BackendError as exc:
        logger.warning("keep warm: loading %s on %s failed: %s", model, state.spec.name, exc)
        return
    logger.info("keep warm: %s loaded on %s", model, state.spec.name)
    state.loaded_until[key] = math.inf
    if model not in state.loaded:
        state.loaded = [*state.loaded, model]


def _has(names: Sequence[str], key: str, model_key: Callable[[str], str]) -> bool:
    for name in names:
        with contextlib.suppress(ValueError):
            if model_key(name) == key:
                return True
    return False


def _expiring(state: BackendState, key: str) -> bool:
    until = state.loaded_until.get(key)
    return until is not None and until - time.time() < REFRESH_BEFORE


def expiry_of(value: object) -> float | None:
    """Seconds since the epoch of an `/api/ps` `expires_at` (Go's RFC 3339), or None."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", str(value or "")).replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(text).timestamp()
    except (ValueError, OverflowError, OSError):
        return None
