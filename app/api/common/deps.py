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
from app.access.quotas import QuotaService
from app.access.teams import TeamStore
from app.api.common.errors import ApiError
from app.fleet import Fleet
from app.jobs.service import Jobs
from app.ollama import ConfigManager, ModelRunner, OllamaManager, OutputManager
from app.ollama.database_outage import RowSpool
from app.relay.relay import Relay
from app.responses import StoredResponses
from app.settings import Settings
from app.usage import UsageLedger

if TYPE_CHECKING:
    from app.api.common.metrics import Metrics
    from app.api.common.shutdown import Shutdown


@dataclass
class Services:
    """The core objects one app instance uses; created and closed by the lifespan."""

    settings: Settings
    manager: OllamaManager
    fleet: Fleet
    """The backends administered at run time (status, registry, placement)."""
    relay: Relay
    """Ollama's own API relayed through the manager's pool (`/api/*`)."""
    runner: ModelRunner
    outputs: OutputManager
    responses: StoredResponses
    """The OpenAI Responses API's stored responses (`/v1/responses`)."""
    usage: UsageLedger
    """The usage ledger (`/gateway/usage`) and the usage of runs nobody stores."""
    config: ConfigManager
    jobs: Jobs
    keys: KeyStore
    teams: TeamStore
    quotas: QuotaService
    """The quota counters (checked before runs start, charged after they end)."""
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


def services_of(request: Request) -> Services:
    """The services, read without a dependency (the hot routes take only `Request`: each
    dependency FastAPI solves costs more bookkeeping than this lookup)."""
    services: Services = request.app.state.services
    return services


async def get_settings(services: ServicesDep) -> Settings:
    return services.settings


async def get_manager(services: ServicesDep) -> OllamaManager:
    return services.manager


async def get_fleet(services: ServicesDep) -> Fleet:
    return services.fleet


async def get_relay(services: ServicesDep) -> Relay:
    return services.relay


async def get_runner(services: ServicesDep) -> ModelRunner:
    return services.runner


async def get_outputs(services: ServicesDep) -> OutputManager:
    return services.outputs


async def get_responses(services: ServicesDep) -> StoredResponses:
    return services.responses


async def get_usage(services: ServicesDep) -> UsageLedger:
    return services.usage


async def get_config(services: ServicesDep) -> ConfigManager:
    return services.config


SettingsDep = Annotated[Settings, Depends(get_settings)]
ManagerDep = Annotated[OllamaManager, Depends(get_manager)]
FleetDep = Annotated[Fleet, Depends(get_fleet)]
RelayDep = Annotated[Relay, Depends(get_relay)]
RunnerDep = Annotated[ModelRunner, Depends(get_runner)]
OutputsDep = Annotated[OutputManager, Depends(get_outputs)]
ConfigDep = Annotated[ConfigManager, Depends(get_config)]
ResponsesDep = Annotated[StoredResponses, Depends(get_responses)]
UsageDep = Annotated[UsageLedger, Depends(get_usage)]


def require_backend(fleet: Fleet, backend: str | None) -> None:
    """404 for a backend name or URL that is not configured (None means "any")."""
    if backend is None:
        return
    try:
        fleet.check_backend(backend)
    except ValueError as exc:
        raise ApiError(404, "Backend not found", str(exc)) from exc
