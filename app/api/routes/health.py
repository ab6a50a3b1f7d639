"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app.api.deps import ServicesDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    status: str = Field(description="`ready`, or `not ready` when a dependency is missing.")
    backends: list[dict[str, Any]] = Field(description="Each backend's health.")
    database: str = Field(description="`ok`, or what went wrong reaching it.")
    missing: list[str] = Field(description="The dependencies that do not answer.")


@router.get("/healthz", operation_id="healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


@router.get(
    "/readyz",
    operation_id="readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "A dependency does not answer."}},
)
async def readyz(services: ServicesDep) -> JSONResponse:
    """Ready when at least one backend and the database answer; says which is missing."""
    backends = await services.manager.abackend_status()
    database = "ok"
    try:
        await services.outputs.aping()
    except Exception as exc:
        database = f"{type(exc).__name__}: {exc}"
    missing = []
    if not any(b["healthy"] for b in backends):
        missing.append("backend")
    if database != "ok":
        missing.append("database")
    body = Readiness(
        status="not ready" if missing else "ready",
        backends=backends,
        database=database,
        missing=missing,
    )
    return JSONResponse(body.model_dump(), status_code=503 if missing else 200)
