"""The installed models over HTTP, for the manager's model doors: `/api/tags` merged
across backends as `OllamaModel`s and their statistics, pulling and deleting models on
chosen backends.

The manager validates arguments, checks the server, keeps its cache and handles the CLI
mode; these functions do the talking to the pool's backends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from app.backends.client import OllamaClient
from app.backends.errors import BackendError, BackendUnavailable
from app.backends.pool import BackendPool, BackendState
from app.ollama.names import model_key
from app.ollama.types import OllamaModel

__all__ = [
    "ProgressCallback",
    "delete_model",
    "list_models",
    "model_from_tag",
    "model_stats",
    "pull_model",
]

ProgressCallback = Callable[[dict[str, Any]], None]


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
