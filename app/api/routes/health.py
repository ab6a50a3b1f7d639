"""Liveness and readiness probes."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app.api.authorization import sees_details
from app.api.deps import ServicesDep

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    """Whether the gateway can serve. The details (backends, database, missing) are shown
    only to an admin key, or to anyone while no key is needed."""

    status: str = Field(description="`ready`, or `not ready` when a dependency is missing.")
    backends: list[dict[str, Any]] | None = Field(
        default=None, description="Each backend's health."
    )
    database: str | None = Field(default=None, description="`ok`, or what went wrong reaching it.")
    missing: list[str] | None = Field(
        default=None, description="The dependencies that do not answer."
    )


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
async def readyz(services: ServicesDep, request: Request) -> JSONResponse:
    """Ready when at least one backend and the database answer; says which is missing (to
    an admin key, or while no key is needed). From SIGTERM on: 503 `shutting down`, so a
    load balancer stops sending here while requests in flight finish."""
    if services.shutdown.draining:
        return JSONResponse({"status": "shutting down"}, status_code=503)
    backends = await services.manager.abackend_status()
    database = "ok"
    try:
        await services.outputs.aping()
    except Exception as exc:
        logger.warning("readiness: the database does not answer: %r", exc)
        database = f"{type(exc).__name__}: {exc}"
    missing = []
    if not any(b["healthy"] for b in backends):
        missing.append("backend")
    if database != "ok":
        missing.append("database")
    status = "not ready" if missing else "ready"
    code = 503 if missing else 200
    if not await sees_details(request, services):
        return JSONResponse({"status": status}, status_code=code)
    body = Readiness(status=status, backends=backends, database=database, missing=missing)
    return JSONResponse(body.model_dump(), status_code=code)
