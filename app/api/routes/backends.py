"""The Ollama servers behind the gateway."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from app.api.deps import ManagerDep

router = APIRouter(prefix="/gateway/backends", tags=["backends"])


class BackendOut(BaseModel):
    name: str
    url: str
    healthy: bool
    circuit: str = Field(description="closed (in use) or open (taken out after failures).")
    outstanding: int = Field(description="Requests in flight now.")
    queued: int = Field(description="Requests waiting for a slot now.")
    max_concurrency: int | None = None
    weight: float = 1.0
    consecutive_failures: int = 0
    last_error: str | None = None
    loaded: list[str] = Field(default_factory=list, description="Models loaded in memory.")
    version: str | None = None
    models: list[str] | None = Field(default=None, description="Installed model names.")
    error: str | None = Field(default=None, description="Why it is unhealthy.")


@router.get("", operation_id="list_backends", response_model=list[BackendOut])
async def list_backends(manager: ManagerDep) -> list[BackendOut]:
    """Each configured backend: health, version and installed models."""
    return [BackendOut(**status) for status in await manager.abackend_status()]
