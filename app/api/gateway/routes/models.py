"""Installed models: list, inspect, delete, stats."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Response, status

from app.api.common.auth import require_admin
from app.api.common.deps import ConfigDep, FleetDep, ManagerDep, require_backend
from app.api.common.errors import ApiError
from app.api.gateway.problems import Problem
from app.api.gateway.schemas.models import ModelOut, ModelStats
from app.ollama import model_key

router = APIRouter(prefix="/gateway/models", tags=["models"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No such model on any backend."}
}


@router.get("", operation_id="list_models", response_model=list[ModelOut])
async def list_models(
    manager: ManagerDep,
    fleet: FleetDep,
    refresh: bool = Query(default=False, description="Ask the backends again, skipping the cache."),
) -> list[ModelOut]:
    """The models installed on the backends (cached for a few seconds)."""
    models = await manager.alist_models(force_refresh=refresh)
    where = await fleet.amodel_locations(force_refresh=refresh)
    return [ModelOut.from_model(m, where.get(model_key(m.name))) for m in models]


@router.get("/stats", operation_id="get_model_stats", response_model=ModelStats)
async def get_model_stats(manager: ManagerDep) -> ModelStats:
    """Counts and sizes of the installed models, by family."""
    return ModelStats.from_stats(await manager.aget_model_stats())


@router.get(
    "/{name:path}/config",
    operation_id="get_model_config",
    response_model=dict[str, Any],
    responses={404: {"model": Problem, "description": "No config stored for the model."}},
)
async def get_model_config(name: str, config: ConfigDep) -> dict[str, Any]:
    """The model's stored config (else its `model_defaults` entry)."""
    found = await config.aget_model_config(name)
    if found is None:
        raise ApiError(404, "No model config", f"no config is stored for model '{name}'")
    return found


@router.put(
    "/{name:path}/config",
    operation_id="put_model_config",
    response_model=dict[str, Any],
    dependencies=[Depends(require_admin)],
)
async def put_model_config(
    name: str,
    config: ConfigDep,
    body: dict[str, Any] = Body(description="Any JSON object, e.g. default options."),
) -> dict[str, Any]:
    """Store (replace) the model's config."""
    if not await config.asave_model_config(name, body):
        raise ApiError(422, "Invalid model config", "the config could not be stored")
    return body


@router.get("/{name:path}", operation_id="get_model", response_model=ModelOut, responses=NOT_FOUND)
async def get_model(name: str, manager: ManagerDep, fleet: FleetDep) -> ModelOut:
    """One installed model; `llama3.1` finds `llama3.1:latest`."""
    model = await manager.aget_model_by_name(name)
    if model is None:
        raise ApiError(404, "Model not found", f"model '{name}' is not installed on any backend")
    where = await fleet.amodel_locations()
    return ModelOut.from_model(model, where.get(model_key(model.name)))


@router.delete(
    "/{name:path}",
    operation_id="delete_model",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=NOT_FOUND,
    dependencies=[Depends(require_admin)],
)
async def delete_model(
    name: str,
    manager: ManagerDep,
    fleet: FleetDep,
    backend: str | None = Query(
        default=None, max_length=2048, description="Only from this backend (name or URL)."
    ),
) -> Response:
    """Remove a model from every backend that has it (or from `backend` only)."""
    require_backend(fleet, backend)
    if not await manager.adelete_model(name, backend=backend):
        raise ApiError(404, "Model not found", f"model '{name}' is not installed on any backend")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
