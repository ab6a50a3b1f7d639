"""Prometheus metrics (`GET /metrics`, admin once keys exist).

The Prometheus text format, or OpenMetrics (with exemplars: the trace of an observation,
when tracing is on) for a scraper whose `Accept` asks for `application/openmetrics-text`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

from app.api.common.deps import ServicesDep

router = APIRouter(include_in_schema=False)


@router.get("/metrics")
async def metrics(request: Request, services: ServicesDep) -> Response:
    registry = services.metrics.registry
    if "application/openmetrics-text" in request.headers.get("accept", ""):
        render = cast(Callable[[CollectorRegistry], bytes], openmetrics.generate_latest)
        return Response(render(registry), media_type=openmetrics.CONTENT_TYPE_LATEST)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
