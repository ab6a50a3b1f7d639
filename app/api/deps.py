"""What routes receive through `Depends`: the core's objects, built once in the lifespan.

The getters are `async def` on purpose: FastAPI runs a plain `def` dependency in a worker
thread, a thread hop per dependency per request.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from app.access import AuditWriter, KeyStore, RateLimiter
from app.api.errors import ApiError
from app.ollama import ConfigManager, ModelRunner, OllamaManager, OutputManager
from app.ollama.database_outage import RowSpool
from app.ollama.jobs import Jobs
from app.settings import Settings

if TYPE_CHECKING:
    from app.api.observability import Metrics
    from app.api.shutdown import Shutdown


@dataclass
class Services:
    """The core objects one app instance uses; created and closed by the lifespan."""

    settings: Settings
    manager: OllamaManager
    runner: ModelRunner
    outputs: OutputManager
    config: ConfigManager
    jobs: Jobs
    keys: KeyStore
    limiter: RateLimiter
    audit: AuditWriter
    metrics: Metrics
    shutdown: Shutdown
    spool: RowSpool
    """Where results wait while the database does not answer (its depth: /readyz, /metrics)."""
    background: set[asyncio.Task[None]] = field(default_factory=set)
    """Fire-and-forget work (token charges) kept referenced until done."""


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_settings(services: ServicesDep) -> Settings:
    return services.settings


async def get_manager(services: ServicesDep) -> OllamaManager:
    return services.manager


async def get_runner(services: ServicesDep) -> ModelRunner:
    return services.runner


async def get_outputs(services: ServicesDep) -> OutputManager:
    return services.outputs


async def get_config(services: ServicesDep) -> ConfigManager:
    return services.config


SettingsDep = Annotated[Settings, Depends(get_settings)]
ManagerDep = Annotated[OllamaManager, Depends(get_manager)]
RunnerDep = Annotated[ModelRunner, Depends(get_runner)]
OutputsDep = Annotated[OutputManager, Depends(get_outputs)]
ConfigDep = Annotated[ConfigManager, Depends(get_config)]


def require_backend(manager: OllamaManager, backend: str | None) -> None:
    """404 for a backend name or URL that is not configured (None means "any")."""
    if backend is None:
        return
    try:
        manager.check_backend(backend)
    except ValueError as exc:
        raise ApiError(404, "Backend not found", str(exc)) from exc
