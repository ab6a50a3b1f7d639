"""The FastAPI app: `create_app(settings)` and the lifespan that opens and closes resources."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app import __version__
from app.access import (
    AuditStore,
    AuditWriter,
    KeyStore,
    MemoryRateLimiter,
    RedisRateLimiter,
    is_loopback,
)
from app.access.quotas import Clock, JobQuotaGate, QuotaService
from app.access.teams import TeamStore
from app.api.anthropic import errors as anthropic_errors
from app.api.anthropic import routes as anthropic_api
from app.api.common.auth import require_admin, require_user
from app.api.common.deps import Services
from app.api.common.errors import install_error_handlers
from app.api.common.metrics import Metrics
from app.api.common.shutdown import InFlight, Shutdown
from app.api.console.static_site import install_console
from app.api.edge.audit_log import AuditMiddleware
from app.api.edge.body_size import BodySizeLimit
from app.api.edge.content_encoding import RequestDecompression
from app.api.edge.json_guard import JsonBodyGuard
from app.api.edge.observability import ObservabilityMiddleware
from app.api.gateway import problems
from app.api.gateway.openapi import install_openapi
from app.api.gateway.problems import Problem
from app.api.gateway.routes import (
    audit,
    backends,
    batches,
    benchmarks,
    chat,
    comparisons,
    config,
    generate,
    jobs,
    keys,
    models,
    placement,
    pulls,
    quotas,
    results,
    teams,
    usage,
    whoami,
)
from app.api.gateway.routes.pulls import PullOut
from app.api.gateway.schemas.common import ResultOut
from app.api.gateway.schemas.jobs import JobOut, JobProgress, PullProgress
from app.api.gateway.schemas.runs import (
    BatchJobOut,
    BatchProgress,
    ChunkEvent,
    ErrorEvent,
    ModelChunkEvent,
    ReportOut,
)
from app.api.ollama import errors as ollama_errors
from app.api.ollama import routes as ollama_api
from app.api.openai import audio as openai_audio
from app.api.openai import errors as openai_errors
from app.api.openai import routes as openai_api
from app.api.openai.responses import errors as responses_errors
from app.api.openai.responses import routes as responses_api
from app.api.ops import health, metrics
from app.fleet import Fleet
from app.jobs.service import Jobs
from app.observability import telemetry, telemetry_setup
from app.ollama import ConfigManager, ModelRunner, OllamaManager, OutputManager
from app.ollama.database_outage import RowSpool
from app.relay.relay import Relay
from app.responses import StoredResponses
from app.settings import Settings
from app.storage.migrations import ensure_schema
from app.usage import UsageLedger

logger = logging.getLogger(__name__)

DESCRIPTION = """\
A gateway in front of one or more Ollama servers.

`/gateway/*` is the gateway's own API (this document). The gateway also serves Ollama's
own API at `/api/*`, the OpenAI API at `/v1/*` (chat/completions, completions, responses,
embeddings, models, audio transcriptions and speech) and Anthropic's Messages API at
`/v1/messages` (and `/v1/messages/count_tokens`), described by those projects' documents rather than this one. Errors are RFC 9457 problem
details (`application/problem+json`). Streamed runs are server-sent events: `chunk`
events, then exactly one `result` or `error` event.
"""


COMMON_ERRORS: dict[int | str, dict[str, object]] = {
    400: {
        "model": Problem,
        "description": "The body could not be read (not UTF-8 JSON), or its JSON nests deeper "
        "than `GATEWAY_MAX_JSON_DEPTH`.",
    },
    413: {"model": Problem, "description": "The body is over the size limit."},
    422: {
        "model": Problem,
        "description": "The request is invalid, or holds text no database can store (NUL, "
        "lone surrogates) anywhere in its body, path or query; `errors` names each field.",
    },
    500: {"model": Problem, "description": "The gateway failed; the error was logged."},
    503: {
        "model": Problem,
        "description": "The database does not answer and the request needs it; retry later "
        "(`Retry-After`). Runs are still served: their results wait in the spool.",
    },
}


AUTH_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": Problem, "description": "No API key, or one that is unknown or revoked."},
    403: {"model": Problem, "description": "The key's scope or model allowlist forbids it."},
    429: {"model": Problem, "description": "The key is over its rate limit (`Retry-After`)."},
}


def build_services(settings: Settings, *, clock: Clock | None = None) -> Services:
    """The core objects for one app instance (nothing touches the network here); `clock`
    is what time it is for quota windows (tests move it)."""
    # The schema was ensured before (the lifespan, `worker`): a first write during a
    # database outage goes to the spool rather than failing on that check.
    outputs = OutputManager(database_url=settings.database_url, ensure_schema_on_first_use=False)
    manager = OllamaManager(
        auto_start_server=False,
        base_url=settings.backends[0],
        backends=settings.backends,
        settings=settings,
        output_manager=outputs,
    )
    # Runs and reports wait here while the database does not answer (see app/storage/spool.py).
    outputs.spool = spool = RowSpool(
        settings.spool_dir, settings.database_url, settings.spool_max_bytes
    )
    audit = AuditWriter(AuditStore(settings.database_url))
    escaped = {"executions": lambda: outputs.escaped_count, "audit_log": lambda: audit.escaped}
    keys = KeyStore(settings.database_url, cache_seconds=settings.key_cache_seconds)
    quota_service = QuotaService(
        settings.database_url,
        tz=settings.quota_tz,
        sync_seconds=settings.quota_sync_seconds,
        clock=clock,
    )
    # Every finished run (any surface, jobs included) is charged to its key and team.
    manager.usage_observers.append(quota_service.observe_run)
    return Services(
        settings=settings,
        manager=manager,
        fleet=(
            fleet := Fleet(manager.pool, settings, forget_inventory=manager.mark_inventory_stale)
        ),
        relay=Relay(manager.executor, forget_inventory=manager.mark_inventory_stale),
        runner=ModelRunner(manager),
        outputs=outputs,
        responses=StoredResponses(settings.database_url),
        usage=UsageLedger(settings.database_url),
        config=ConfigManager(database_url=settings.database_url, settings=settings),
        jobs=Jobs(manager, settings, JobQuotaGate(keys, quota_service)),
        keys=keys,
        teams=TeamStore(settings.database_url, on_change=keys.forget),
        quotas=quota_service,
        limiter=(
            RedisRateLimiter(settings.redis_url) if settings.redis_url else MemoryRateLimiter()
        ),
        audit=audit,
        metrics=Metrics(fleet.backend_loads, escaped, spool.depth),
        spool=spool,
        shutdown=Shutdown(settings.shutdown_drain, settings.shutdown_grace),
    )


USAGE_FLUSH_SECONDS = 2.0
"""How often the usage of runs nobody stores is added to the usage ledger."""


async def _flush_usage(services: Services) -> None:
    """The last usage of unstored runs to the ledger (at shutdown: nothing is left behind
    while the database answers)."""
    try:
        await services.usage.aflush()
    except Exception:
        logger.exception("the usage of unstored runs could not be added to the ledger")


def create_app(settings: Settings | None = None, *, clock: Clock | None = None) -> FastAPI:
    """The app; `clock` is what time it is for quota windows (None: the system's; tests
    move it)."""
    settings = settings or Settings()
    # Tracing, when OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT says so; else nothing of
    # OpenTelemetry is imported (see app/observability/telemetry_setup.py).
    telemetry_setup.configure(trace_content=settings.trace_content)

    async def start_up(app: FastAPI) -> tuple[Services, list[asyncio.Task[None]]]:
        """Open the resources and start the background tasks (see `lifespan`)."""
        # A new database gets the schema; an old one is refused unless auto_migrate says so.
        await asyncio.to_thread(
            ensure_schema, settings.database_url, upgrade_old=settings.auto_migrate
        )
        services = build_services(settings, clock=clock)
        if settings.admin_key is not None:
            await services.keys.aensure_bootstrap_key(settings.admin_key.get_secret_value())
        exposed = not is_loopback(settings.host) and not settings.allow_anonymous
        if exposed and not await services.keys.ahas_keys():
            raise RuntimeError(
                f"refusing to serve on {settings.host} without API keys "
                "(create one, bind to loopback, or set GATEWAY_ALLOW_ANONYMOUS)"
            )
        await services.config.aload_config()
        services.manager.usage_observers.append(services.metrics.observe_run)
        # Runs nobody stores reach the usage ledger from memory (stored runs are charged
        # in the transaction that stores them).
        services.manager.executor.unstored_observers.append(services.usage.charge_unstored)
        app.state.services = services
        if settings.server == "uvicorn":
            services.shutdown.install()  # granian's workers end on SIGTERM their own way
        services.quotas.start()
        await services.jobs.start(run_jobs=settings.embedded_worker)
        services.audit.start()
        await services.fleet.apply_registry()  # then every 2 s, in pool.watch
        watcher = asyncio.create_task(
            services.manager.pool.watch(settings.health_interval), name="backend-health"
        )
        # What an earlier run (or process) spooled is written now, and from then on
        # whenever the database answers again.
        replayer = asyncio.create_task(
            services.spool.replay_forever(services.outputs.db), name="spool-replay"
        )
        flusher = asyncio.create_task(
            services.usage.aflush_forever(USAGE_FLUSH_SECONDS), name="usage-flush"
        )
        drain = asyncio.create_task(
            services.shutdown.watch_drain_file(settings.drain_path()), name="drain-file"
        )
        return services, [watcher, replayer, flusher, drain]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Start-up and background work (health rounds, registry polls, the spool, the
        # audit writer, the job worker's polling) make no trace: the instrumentations stay
        # quiet in these tasks. A job continues the trace of the request that started it.
        with telemetry.suppressed():
            services, tasks = await start_up(app)
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await services.jobs.aclose()
            await services.quotas.aclose()
            await services.teams.aclose()
            await services.audit.aclose()
            await services.limiter.aclose()
            await services.keys.aclose()
            await services.fleet.aclose()
            await services.manager.aclose()
            await _flush_usage(services)
            await services.outputs.aclose()
            await services.responses.aclose()
            await services.usage.aclose()
            await services.config.aclose()
            services.metrics.close()
            telemetry_setup.shutdown()

    app = FastAPI(
        title="ollama-gateway",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry layer off: the gateway's tracing (`app.observability`)
        # makes the server spans, and the layer asked the global providers (reading the
        # environment) on every request, tracing on or off
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(
        app,
        [
            problems.SURFACE,
            ollama_errors.SURFACE,
            openai_errors.SURFACE,
            responses_errors.SURFACE,
            anthropic_errors.SURFACE,
        ],
    )
    # Inside the size limit: the guard reads whole bodies, which the limit has bounded.
    # The upload path is neither: its route streams the file to disk within its own limit.
    uploads = {openai_audio.TRANSCRIPTIONS_PATH: settings.max_upload_bytes}
    app.add_middleware(
        JsonBodyGuard, max_depth=settings.max_json_depth, raw_paths=frozenset(uploads)
    )
    # Between the two: a zstd or gzip body is inflated within the same limit, then guarded.
    app.add_middleware(RequestDecompression, max_bytes=settings.max_body_bytes)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, uploads=uploads)
    install_openapi(
        app,
        [
            ChunkEvent,
            ModelChunkEvent,
            ErrorEvent,
            ResultOut,
            ReportOut,
            PullProgress,
            PullOut,
            BatchProgress,
            BatchJobOut,
            JobOut,
            JobProgress,
        ],
    )
    app.add_middleware(AuditMiddleware)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "X-Request-ID",
                "X-API-Key",
                "anthropic-version",
                "anthropic-beta",
            ],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    # Outermost: it sees every response, the middlewares' own (413, CORS) included.
    app.add_middleware(ObservabilityMiddleware)
    # Around everything: a request counts as in flight (for the drain) to its last byte.
    app.add_middleware(InFlight)
    # Route order: a request is matched against the routes in turn (about 1.3 us each,
    # FastAPI's included routers), so the hot paths go first. Routes whose paths start
    # differently can never match the same request, so moving a group ahead of another
    # changes no answer (tests/api/test_route_order.py checks every route): the probes,
    # the gateway's own runs, Ollama's API (its catch-all takes `/api/...` only), the
    # agent surfaces, then the rest.
    user = [Depends(require_user)]
    admin = [Depends(require_admin)]
    gateway_errors = {**COMMON_ERRORS, **AUTH_ERRORS}
    app.include_router(health.router, responses=COMMON_ERRORS)
    for module in (generate, chat):
        app.include_router(module.router, responses=gateway_errors, dependencies=user)
    app.include_router(ollama_api.router)
    # Anthropic's before OpenAI's: it answers `GET /v1/models` when the request carries
    # `anthropic-version`.
    app.include_router(anthropic_api.router, dependencies=user)
    app.include_router(openai_api.router, dependencies=user)
    app.include_router(responses_api.router, dependencies=user)
    app.include_router(openai_audio.router, dependencies=user)
    app.include_router(metrics.router, dependencies=admin)
    for module, needs in (
        (models, user),
        (pulls, admin),
        (batches, user),
        (jobs, user),
        (benchmarks, user),
        (comparisons, user),
        (results, user),
        (config, admin),
        (backends, admin),
        (placement, admin),
        (keys, admin),
        (teams, admin),
        (quotas, user),
        (audit, admin),
        (usage, user),
        (whoami, user),
    ):
        app.include_router(module.router, responses=gateway_errors, dependencies=needs)
    install_console(app)
    # Outside everything else: the server span of each request, continuing its traceparent.
    telemetry_setup.instrument_app(app)
    return app
