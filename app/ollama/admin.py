"""Models and backends over HTTP, for the manager's admin doors: the installed models
(`/api/tags` merged across backends, as `OllamaModel`s) and their statistics, each
backend's status, where each model is, pulling and deleting models on chosen backends, and
letting a removed backend's requests finish.

The manager validates arguments, checks the server, keeps its cache and handles the CLI
mode; these functions do the talking to the pool's backends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.backends.affinity import ConversationAffinity
from app.backends.client import OllamaClient
from app.backends.errors import BackendError, BackendUnavailable
from app.backends.placement import parse_placement
from app.backends.pool import BackendPool, BackendState
from app.backends.spec import BackendSpec, parse_backend
from app.ollama.names import model_key
from app.ollama.types import OllamaModel
from app.settings import Settings

__all__ = [
    "API_TOKEN_ENV_PREFIX",
    "ProgressCallback",
    "api_backend_spec",
    "backend_status",
    "delete_model",
    "list_models",
    "model_from_tag",
    "model_locations",
    "model_stats",
    "pool_options",
    "pull_model",
    "retire_backend",
]

ProgressCallback = Callable[[dict[str, Any]], None]

API_TOKEN_ENV_PREFIX = "BACKEND_TOKEN_"
"""What the name of a `token_env` given through the API starts with, unless a start-up
entry already names it: the API cannot have another variable of the gateway's
environment (its database URL, its cloud credentials) sent to a URL of its choosing."""


def pool_options(settings: Settings) -> dict[str, Any]:
    """The `BackendPool` options `settings` set, for a core's own pool."""
    return {
        "timeout": settings.request_timeout,
        "connect_timeout": settings.connect_timeout,
        "health_timeout": settings.health_timeout,
        "transport": settings.http_transport,
        "batch_share": settings.batch_share,
        "model_key": model_key,
        "placement": parse_placement(settings.placement),
        "keep_warm": settings.keep_warm,
        "affinity": ConversationAffinity(settings.affinity_ttl, settings.affinity_max_entries),
        "load_sample_interval": settings.load_sample_interval,
    }


def api_backend_spec(text: str, configured: Sequence[BackendSpec]) -> BackendSpec:
    """A backend added through the API, read from `text`; ValueError for a bad spec, or a
    `token_env` the API may not name (see `API_TOKEN_ENV_PREFIX`) or that is not set."""
    spec = parse_backend(text)
    env = spec.token_env
    if env is None:
        return spec
    if not env.startswith(API_TOKEN_ENV_PREFIX) and env not in {c.token_env for c in configured}:
        raise ValueError(
            f"token_env {env!r}: through the API, the variable's name must start with "
            f"{API_TOKEN_ENV_PREFIX!r} (or be one GATEWAY_BACKENDS names)"
        )
    if spec.token() is None:
        raise ValueError(
            f"token_env {env!r}: the variable is not set in the gateway's environment (or "
            "holds more than printable characters without spaces)"
        )
    return spec


def model_from_tag(tag: Mapping[str, Any]) -> OllamaModel:
    """An `/api/tags` entry as an `OllamaModel` (id = first 12 hex of the digest, as the CLI)."""
    details = tag.get("details") or {}
    digest = str(tag.get("digest") or "")
    digest = digest.split(":", 1)[1] if digest.startswith("sha256:") else digest
    return OllamaModel(
        name=str(tag.get("name") or tag.get("model") or ""),
        id=digest[:12],
        size=int(tag.get("size") or 0),
        modified=str(tag.get("modified_at") or ""),
        parameters=details.get("parameter_size") or None,
        family=details.get("family") or None,
        format=details.get("format") or None,
    )


async def list_models(clients: Sequence[OllamaClient]) -> list[OllamaModel]:
    """The models of all `clients`, one per model (the first backend's entry wins).

    Backends that fail are left out; when all fail, the first one's `BackendError` is raised.
    """
    answers = await asyncio.gather(*(c.tags() for c in clients), return_exceptions=True)
    models: dict[str, OllamaModel] = {}
    errors: list[BackendError] = []
    for answer in answers:
        if isinstance(answer, BackendError):
            errors.append(answer)
        elif isinstance(answer, BaseException):
            raise answer
        else:
            for tag in answer:
                model = model_from_tag(tag)
                if model.name:
                    models.setdefault(model_key(model.name), model)
    if errors and len(errors) == len(clients):
        raise errors[0]
    return list(models.values())


def model_stats(models: Sequence[OllamaModel], backends: list[str]) -> dict[str, Any]:
    """total_models, total_size (bytes), models (as dicts), families and backends."""
    families: dict[str, int] = {}
    for model in models:
        family = model.family or "unknown"
        families[family] = families.get(family, 0) + 1
    total_size = sum(model.size for model in models)
    return {
        "total_models": len(models),
        "total_size": total_size,
        "total_size_gb": round(total_size / 1e9, 3),
        "models": [model.to_dict() for model in models],
        "families": families,
        "backends": backends,
    }


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


async def pull_model(
    pool: BackendPool,
    model_name: str,
    progress: ProgressCallback | None,
    targets: Sequence[BackendState] | None,
) -> None:
    """Pull onto each of `targets` in turn, or (None) onto the least loaded healthy backend
    the model's placement rule allows.

    With targets each progress object carries a `backend` key. Raises `BackendError` at
    the first pull that fails or ends without a `success` status.
    """
    if targets is None:
        client = (await pool.candidates(None, placed=model_name))[0].client
        await _pull(client, model_name, progress)
        return
    for state in targets:
        await _pull(state.client, model_name, _tag_progress(progress, state.spec.name))


async def delete_model(
    targets: Sequence[BackendState], model_name: str, *, skip_unavailable: bool
) -> bool:
    """Delete from each of `targets`; True when it was deleted somewhere.

    A backend without the model is passed over, and one that cannot be reached when
    `skip_unavailable`; other failures raise `BackendError`.
    """
    deleted = False
    for state in targets:
        try:
            await state.client.delete(model_name)
            deleted = True
        except BackendError as exc:
            if exc.status != 404 and not (skip_unavailable and isinstance(exc, BackendUnavailable)):
                raise
    return deleted


async def _pull(client: OllamaClient, model_name: str, progress: ProgressCallback | None) -> None:
    succeeded = False
    async with contextlib.aclosing(client.pull(model_name)) as lines:
        async for line in lines:
            if progress is not None:
                progress(line)
            succeeded = line.get("status") == "success"
    if not succeeded:
        raise BackendError(
            f"pull of {model_name} ended without a success status", url=client.base_url
        )


def _tag_progress(callback: ProgressCallback | None, backend: str) -> ProgressCallback | None:
    """A progress callback that names the backend in each object it passes on."""
    if callback is None:
        return None

    def tagged(line: dict[str, Any]) -> None:
        callback({**line, "backend": backend})

    return tagged
