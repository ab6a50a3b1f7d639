"""The Ollama servers behind the gateway: their state, and changes at run time (admin)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response, status
from pydantic import BaseModel, Field

from app.api.common.deps import FleetDep
from app.api.common.errors import ApiError
from app.api.gateway.problems import Problem

router = APIRouter(prefix="/gateway/backends", tags=["backends"])


PROCESS = " As this process sees it: each process and replica keeps its own."


class BackendOut(BaseModel):
    """A backend. The list of backends is shared by every process and replica on the
    database (the backend registry, unless `GATEWAY_BACKEND_REGISTRY=false`); circuit
    state, load and queues are per process."""

    name: str
    url: str
    source: Literal["settings", "api"] = Field(
        description="`settings`: from the start-up list, `GATEWAY_BACKENDS`; `api`: added "
        "through `POST /gateway/backends` (stored in the database, shared by every process "
        "and replica)."
    )
    healthy: bool = Field(description="It answered this process's probe just now.")
    circuit: str = Field(
        description="closed (in use) or open (taken out after failures)." + PROCESS
    )
    outstanding: int = Field(description="Requests in flight now." + PROCESS)
    queued: int = Field(description="Requests waiting for a slot now." + PROCESS)
    queue_wait_ms_mean: float | None = Field(
        default=None,
        description="Mean wait for a slot of the last requests that waited." + PROCESS,
    )
    queue_wait_ms_max: float | None = Field(
        default=None,
        description="Longest wait for a slot of the last requests that waited." + PROCESS,
    )
    queued_batch: int = Field(
        default=0,
        description="Of those, runs of jobs (batches, benchmarks, comparisons): they wait "
        "behind interactive requests." + PROCESS,
    )
    outstanding_batch: int = Field(
        default=0, description="Runs of jobs among the requests in flight." + PROCESS
    )
    in_flight: dict[str, int] = Field(
        default_factory=dict, description="Runs in flight per model." + PROCESS
    )
    queued_by_model: dict[str, int] = Field(
        default_factory=dict, description="Runs waiting for a slot per model." + PROCESS
    )
    load_ms: dict[str, float] = Field(
        default_factory=dict,
        description="Per model, the time its cold loads took here (a running mean of "
        "Ollama's `load_duration` of runs that started with the model not loaded); a model "
        "not seen loading counts as 5 s when requests are routed." + PROCESS,
    )
    run_ms: dict[str, float] = Field(
        default_factory=dict,
        description="Per model, the time a run held a slot here (a running mean), which "
        "routing multiplies by the queue to estimate a request's wait." + PROCESS,
    )
    prompt_tokens_per_s: dict[str, float] = Field(
        default_factory=dict,
        description="Per model, its observed prompt evaluation rate here (running means of "
        "Ollama's `prompt_eval_count` and `prompt_eval_duration`), which routing multiplies "
        "by a prompt's tokens not cached here to estimate its time to first token." + PROCESS,
    )
    prefix_entries: int = Field(
        default=0,
        description="Prompt prefix keys (about 500 tokens each) the prefix index holds for "
        "this backend: what routing takes to be in its prompt cache (at most "
        "`GATEWAY_PREFIX_INDEX_MAX_ENTRIES`)." + PROCESS,
    )
    max_concurrency: int | None = Field(
        default=None, description="Requests at once it admits (`max`), in each process."
    )
    max_per_model: int | None = Field(
        default=None,
        description="Runs of one model at once it admits (`max_per_model`), in each process.",
    )
    tags: list[str] = Field(default_factory=list, description="Its labels (`tags`).")
    token_env: str | None = Field(
        default=None,
        description="The environment variable whose bearer token is sent to it (`token_env`; "
        "the token itself is never shown).",
    )
    token_set: bool = Field(
        default=False,
        description="That variable was set when this process took the backend up.",
    )
    weight: float = 1.0
    consecutive_failures: int = Field(default=0, description="Failures in a row." + PROCESS)
    last_error: str | None = Field(default=None, description="Its last failure." + PROCESS)
    loaded: list[str] = Field(default_factory=list, description="Models loaded in memory.")
    warm: list[str] = Field(
        default_factory=list,
        description="Models the gateway keeps loaded here (`GATEWAY_KEEP_WARM`): loaded at "
        "start and again when evicted." + PROCESS,
    )
    version: str | None = None
    models: list[str] | None = Field(default=None, description="Installed model names.")
    error: str | None = Field(default=None, description="Why it is unhealthy.")


class BackendAdd(BaseModel):
    backend: str = Field(
        min_length=1,
        max_length=2048,
        # ASCII classes only: regex engines disagree on what `\s` and `\w` hold beyond it
        pattern=r"^([^=; \t\n\r\f\v]+=)?https?://[^; \t\n\r\f\v]+"
        r"(;(max|max_per_model|weight)=[0-9.]+|;tags=[A-Za-z0-9_.,-]+"
        r"|;token_env=[A-Za-z_][A-Za-z0-9_]*)*$",
        description="As in GATEWAY_BACKENDS: `[name=]url[;max=N][;max_per_model=N]"
        "[;weight=W][;tags=a,b][;token_env=NAME]`. Through the API, `token_env` must name a "
        "variable set in the gateway's environment whose name starts with `BACKEND_TOKEN_` "
        "(or one a GATEWAY_BACKENDS entry names).",
        examples=["gpu2=http://10.0.0.6:11434;max=4;weight=2;tags=a100,big"],
    )


@router.get("", operation_id="list_backends", response_model=list[BackendOut])
async def list_backends(fleet: FleetDep) -> list[BackendOut]:
    """Each backend: where it comes from, health, version, installed and loaded models, and
    this process's circuit, load and queue (each process and replica keeps its own)."""
    return [BackendOut(**status) for status in await fleet.abackend_status()]


@router.post(
    "",
    operation_id="add_backend",
    response_model=BackendOut,
    status_code=status.HTTP_201_CREATED,
    responses={409: {"model": Problem, "description": "Its name or URL is already in use."}},
)
async def add_backend(body: BackendAdd, fleet: FleetDep) -> BackendOut:
    """Add a backend now. It is stored in the database: every process and replica sharing
    it takes the backend up within 5 s, and restarts keep it."""
    try:
        added = await fleet.aadd_backend(body.backend)
    except ValueError as exc:
        code = 409 if "already in the pool" in str(exc) else 422
        raise ApiError(code, "Backend not added", str(exc)) from exc
    name = added["name"]
    return next(BackendOut(**s) for s in await fleet.abackend_status() if s["name"] == name)


class SampledLoadOut(BaseModel):
    running: int = Field(description="Requests running on the backend at the sample.")
    queued: int = Field(description="Requests waiting for one of its slots at the sample.")
    finished: int = Field(description="Requests that finished on it since the sample before.")


class LoadSampleOut(BaseModel):
    at: datetime = Field(description="When the sample was taken.")
    seconds: float = Field(description="Seconds since the sample before.")
    backends: dict[str, SampledLoadOut] = Field(description="By backend name.")


class LoadHistoryOut(BaseModel):
    every_seconds: float = Field(description="Seconds between samples.")
    samples: list[LoadSampleOut] = Field(description="Oldest first.")


@router.get("/history", operation_id="backend_load_history", response_model=LoadHistoryOut)
async def backend_load_history(
    fleet: FleetDep,
    minutes: Annotated[
        float, Query(gt=0, le=15, description="How far back, in minutes (at most 15).")
    ] = 5,
) -> LoadHistoryOut:
    """Each backend's load over the last minutes, sampled every
    `GATEWAY_LOAD_SAMPLE_INTERVAL` seconds: requests running and queued at each sample,
    and requests finished since the one before (the web console's load chart)."""
    samples = fleet.backend_load_history(minutes)
    return LoadHistoryOut(
        every_seconds=fleet.pool.load_history.every,
        samples=[
            LoadSampleOut(
                at=datetime.fromtimestamp(s.at, UTC),
                seconds=round(s.seconds, 3),
                backends={
                    name: SampledLoadOut(running=b.running, queued=b.queued, finished=b.finished)
                    for name, b in s.backends.items()
                },
            )
            for s in samples
        ],
    )


@router.delete(
    "/{backend:path}",
    operation_id="remove_backend",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        404: {"model": Problem, "description": "No backend of that name or URL."},
        409: {"model": Problem, "description": "It is the last backend."},
    },
)
async def remove_backend(backend: str, fleet: FleetDep) -> Response:
    """Take a backend out (requests in flight on it finish first), in every process and
    replica within 5 s, and for good: a backend from `GATEWAY_BACKENDS` too stays out
    after restarts, until it is added through the API again."""
    try:
        await fleet.aremove_backend(backend)
    except ValueError as exc:
        code = 409 if "last one" in str(exc) else 404
        raise ApiError(code, "Backend not removed", str(exc)) from exc
    return Response(status_code=status.HTTP_204_NO_CONTENT)
