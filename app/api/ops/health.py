"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app.api.common.authorization import sees_details
from app.api.common.deps import ServicesDep
from app.local.local_model import local_model_health

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class SpoolState(BaseModel):
    """Results waiting in the spool for the database (`GATEWAY_SPOOL_DIR`)."""

    entries: int = Field(description="Entries (a run, or a report with its runs) waiting.")
    bytes: int = Field(description="Their size in the spool file.")
    max_bytes: int = Field(description="`GATEWAY_SPOOL_MAX_BYTES`: the spool file's bound.")


class Readiness(BaseModel):
    """Whether the gateway can serve. The details (backends, database, spool, missing,
    degraded) are shown only to an admin key, or to anyone while no key is needed."""

    status: str = Field(description="`ready`, or `not ready` when a dependency is missing.")
    backends: list[dict[str, Any]] | None = Field(
        default=None, description="Each backend's health."
    )
    database: str | None = Field(default=None, description="`ok`, or what went wrong reaching it.")
    spool: SpoolState | None = Field(
        default=None, description="Results spooled while the database did not answer."
    )
    missing: list[str] | None = Field(
        default=None, description="The dependencies that do not answer."
    )
    degraded: list[str] | None = Field(
        default=None,
        description="Dependencies that do not answer but are done without for now: "
        "`database` while its results go to the spool (runs are served; other requests "
        "that need the database get 503 with Retry-After).",
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
    """Ready when at least one backend answers and results can be stored: the database
    answers, or else the spool has room (runs are still served; their results wait in the
    spool, and the database is listed as `degraded`). Says what is missing (to an admin
    key, or while no key is needed). From SIGTERM on: 503 `shutting down`, so a load
    balancer stops sending here while requests in flight finish."""
    if services.shutdown.draining:
        return JSONResponse({"status": "shutting down"}, status_code=503)
    backends = await services.fleet.abackend_status()
    database = "ok"
    try:
        await services.outputs.aping()
    except Exception as exc:
        logger.warning("readiness: the database does not answer: %r", exc)
        database = f"{type(exc).__name__}: {exc}"
    spool = services.spool
    depth = await spool.adepth()
    missing: list[str] = []
    degraded: list[str] = []
    local = services.settings.local_model_url
    if local and not await local_model_health(local, backends, services.settings.health_timeout):
        missing.append("local_model")
    if not any(b["healthy"] for b in backends):
        missing.append("backend")
    if database != "ok":
        room = await asyncio.to_thread(spool.has_room)
        (degraded if room else missing).append("database")
    status = "not ready" if missing else "ready"
    code = 503 if missing else 200
    if not await sees_details(request, services):
        return JSONResponse({"status": status}, status_code=code)
    body = Readiness(
        status=status,
        backends=backends,
        database=database,
        spool=SpoolState(entries=depth.entries, bytes=depth.bytes, max_bytes=spool.max_bytes),
        missing=missing,
        degraded=degraded,
    )
    return JSONResponse(body.model_dump(), status_code=code)
