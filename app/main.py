"""The FastAPI app: `create_app(settings)` and the lifespan that opens and closes resources."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app import __version__, telemetry, telemetry_setup
from app.access import (
    AuditStore,
    AuditWriter,
    KeyStore,
    MemoryRateLimiter,
    RedisRateLimiter,
    is_loopback,
)
from app.api.audit_log import AuditMiddleware
from app.api.auth import require_admin, require_user
from app.api.body_size import BodySizeLimit
from app.api.console import install_console
from app.api.deps import Services
from app.api.errors import Problem, install_error_handlers
from app.api.json_guard import JsonBodyGuard
from app.api.observability import Metrics, ObservabilityMiddleware
from app.api.openapi import install_openapi
from app.api.routes import (
    audit,
    backends,
    batches,
    benchmarks,
    chat,
    comparisons,
    config,
    generate,
    health,
    jobs,
    keys,
    metrics,
    models,
    ollama_api,
    openai_api,
    placement,
    pulls,
    results,
    whoami,
)
from app.api.routes.pulls import PullOut
from app.api.schemas.common import ResultOut
from app.api.schemas.jobs import JobOut, JobProgress, PullProgress
from app.api.schemas.runs import (
    BatchJobOut,
    BatchProgress,
    ChunkEvent,
    ErrorEvent,
    ModelChunkEvent,
    ReportOut,
)
from app.api.shutdown import Shutdown
from app.ollama import ConfigManager, ModelRunner, OllamaManager, OutputManager
from app.ollama.database_outage import RowSpool
from app.ollama.jobs import Jobs
from app.settings import Settings
from app.storage.migrations import ensure_schema

logger = logging.getLogger(__name__)

DESCRIPTION = """\
A gateway in front of one or more Ollama servers.

`/gateway/*` is the gateway's own API (this document). The gateway also serves Ollama's
own API at `/api/*` and the OpenAI API at `/v1/*` (chat/completions, completions,
embeddings, models), described by those projects' documents rather than this one. Errors are RFC 9457 problem
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


def build_services(settings: Settings) -> Services:
    """The core objects for one app instance (nothing touches the network here)."""
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
    return Services(
        settings=settings,
        manager=manager,
        runner=ModelRunner(manager),
        outputs=outputs,
        config=ConfigManager(database_url=settings.database_url, settings=settings),
        jobs=Jobs(manager, settings),
        keys=KeyStore(settings.database_url, cache_seconds=settings.key_cache_seconds),
        limiter=(
            RedisRateLimiter(settings.redis_url) if settings.redis_url else MemoryRateLimiter()
        ),
        audit=audit,
        metrics=Metrics(manager.backend_loads, escaped, spool.depth),
        spool=spool,
        shutdown=Shutdown(settings.shutdown_drain, settings.shutdown_grace),
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    # Tracing, when OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT says so; else nothing of
    # OpenTelemetry is imported (see app/telemetry_setup.py).
    telemetry_setup.configure(trace_content=settings.trace_content)

    async def start_up(app: FastAPI) -> tuple[Services, asyncio.Task[None], asyncio.Task[None]]:
        """Open the resources and start the background tasks (see `lifespan`)."""
        # A new database gets the schema; an old one is refused unless auto_migrate says so.
        await asyncio.to_thread(
            ensure_schema, settings.database_url, upgrade_old=settings.auto_migrate
        )
        services = build_services(settings)
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
        app.state.services = services
        services.shutdown.install()
        await services.jobs.start(run_jobs=settings.embedded_worker)
        services.audit.start()
        await services.manager.aapply_backend_registry()  # then every 2 s, in pool.watch
        watcher = asyncio.create_task(
            services.manager.pool.watch(settings.health_interval), name="backend-health"
        )
        # What an earlier run (or process) spooled is written now, and from then on
        # whenever the database answers again.
        replayer = asyncio.create_task(
            services.spool.replay_forever(services.outputs.db), name="spool-replay"
        )
        return services, watcher, replayer

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Start-up and background work (health rounds, registry polls, the spool, the
        # audit writer, the job worker's polling) make no trace: the instrumentations stay
        # quiet in these tasks. A job continues the trace of the request that started it.
        with telemetry.suppressed():
            services, watcher, replayer = await start_up(app)
        try:
            yield
        finally:
            for task in (watcher, replayer):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await services.jobs.aclose()
            await services.audit.aclose()
            await services.limiter.aclose()
            await services.keys.aclose()
            await services.manager.aclose()
            await services.outputs.aclose()
            await services.config.aclose()
            services.metrics.close()
            telemetry_setup.shutdown()

    app = FastAPI(
        title="ollama-gateway",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    install_error_handlers(app)
    # Inside the size limit: the guard reads whole bodies, which the limit has bounded.
    app.add_middleware(JsonBodyGuard, max_depth=settings.max_json_depth)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
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
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    # Outermost: it sees every response, the middlewares' own (413, CORS) included.
    app.add_middleware(ObservabilityMiddleware)
    app.include_router(health.router, responses=COMMON_ERRORS)
    app.include_router(metrics.router, dependencies=[Depends(require_admin)])
    user = [Depends(require_user)]
    admin = [Depends(require_admin)]
    for module, needs in (
        (models, user),
        (pulls, admin),
        (generate, user),
        (chat, user),
        (batches, user),
        (jobs, user),
        (benchmarks, user),
        (comparisons, user),
        (results, user),
        (config, admin),
        (backends, admin),
        (placement, admin),
        (keys, admin),
        (audit, admin),
        (whoami, user),
    ):
        app.include_router(
            module.router, responses={**COMMON_ERRORS, **AUTH_ERRORS}, dependencies=needs
        )
    install_console(app)
    # The drop-in surfaces: the OpenAI API, then Ollama's (its catch-all route goes last).
    app.include_router(openai_api.router, dependencies=user)
    app.include_router(ollama_api.router)
    # Outside everything else: the server span of each request, continuing its traceparent.
    telemetry_setup.instrument_app(app)
    return app
