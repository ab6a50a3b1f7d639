"""The Ollama servers behind the gateway."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from app.api.deps import ManagerDep

router = APIRouter(prefix="/gateway/backends", tags=["backends"])


class BackendOut(BaseModel):
    url: str
    healthy: bool
    version: str | None = None
    models: list[str] | None = Field(default=None, description="Installed model names.")
    error: str | None = Field(default=None, description="Why it is unhealthy.")


@router.get("", operation_id="list_backends", response_model=list[BackendOut])
async def list_backends(manager: ManagerDep) -> list[BackendOut]:
    """Each configured backend: health, version and installed models."""
    return [BackendOut(**status) for status in await manager.abackend_status()]
