"""What the fleet's backends are doing, as this process sees them (`backend_loads`, for
metrics) and as they answer (`backend_status`), where each model is, and letting a removed
backend's requests finish (`retire_backend`)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from app.backends.client import OllamaClient
from app.backends.errors import BackendError
from app.backends.pool import BackendPool, BackendState
from app.ollama.names import model_key

__all__ = ["BackendLoad", "backend_loads", "backend_status", "model_locations", "retire_backend"]


@dataclass(frozen=True)
class BackendLoad:
    """A backend's state as this process sees it (nothing is asked of the backend)."""

    name: str
    up: bool
    """Its circuit is closed and its last check answered."""
    outstanding: int
    """Requests in flight on it."""
    waiting: int
    """Requests waiting for one of its slots."""
    url: str = ""


def backend_loads(pool: BackendPool) -> list[BackendLoad]:
    """Each backend's `BackendLoad`, for metrics scraped often."""
    return [
        BackendLoad(
            name=state.spec.name,
            up=state.available and state.failures == 0,
            outstanding=state.outstanding,
            waiting=state.waiting,
            url=state.spec.url,
        )
        for state in pool.states
    ]


async def backend_status(pool: BackendPool, health_timeout: float) -> list[dict[str, Any]]:
    """Each backend's load (`describe()`) with its health: `url`, `healthy`, and `version`
    and `models`, or `error`. All are asked at once, each within `health_timeout` s."""

    async def one(client: OllamaClient) -> dict[str, Any]:
        state = pool.state_of(client).describe()
        status: dict[str, Any] = {**state, "url": client.base_url, "healthy": False}
        try:
            async with asyncio.timeout(health_timeout):
                status["version"] = await client.version()
                tags = await client.tags(timeout=health_timeout)
        except (BackendError, TimeoutError) as exc:
            status["error"] = str(exc) or "timed out"
            return status
        status["healthy"] = True
        status["models"] = [str(t.get("name", "")) for t in tags]
        return status

    return list(await asyncio.gather(*(one(c) for c in pool.clients)))


async def model_locations(pool: BackendPool, force_refresh: bool) -> dict[str, list[str]]:
    """Backend names per normalised model name, from the pool's (refreshed) inventory."""
    await pool.refresh_stale(force=force_refresh)
    where: dict[str, list[str]] = {}
    for state in pool.states:
        for name in state.models or []:
            where.setdefault(model_key(name), []).append(state.spec.name)
    return where


async def retire_backend(state: BackendState, drain_timeout: float) -> None:
    """Wait (at most `drain_timeout` s) for a removed backend's requests, then close its
    client."""
    # Requests may run on any event loop (sync doors use a private one), so the in-flight
    # counter is polled rather than awaited.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(drain_timeout):
            while state.outstanding:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    await state.client.aclose()
