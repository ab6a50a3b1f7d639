"""What each finished run used, for whoever counts it (metrics, per-key token limits).

The manager reports a `RunUsage` for every run it finishes (any surface, stored or not)
to its `usage_observers` (process-wide: metrics) and to the `usage_sink` of the current
context (request-scoped: the caller's token budget). Context variables are copied into
the tasks a request starts, so a run in a background job reports to the request that
started it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

from app.ollama.types import ModelExecutionResult

__all__ = ["RunUsage", "UsageObserver", "run_principal", "run_team", "usage_of", "usage_sink"]


@dataclass(frozen=True)
class RunUsage:
    model: str
    surface: str
    kind: str
    success: bool
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token: float | None
    duration: float
    backend: str | None = None
    """The URL of the backend that answered (None: none did, or CLI mode)."""
    backend_seconds: float = 0.0
    """The backend's own time for the run (Ollama's total_duration), in seconds."""
    load_seconds: float = 0.0
    """The part of it spent loading the model (Ollama's load_duration), in seconds."""


UsageObserver = Callable[[RunUsage], None]

usage_sink: ContextVar[UsageObserver | None] = ContextVar("usage_sink", default=None)
"""The current request's observer, set by the API layer (None outside a request)."""


run_principal: ContextVar[str | None] = ContextVar("run_principal", default=None)
"""Who the current context's runs are for (an API key's name), kept with each stored run."""

run_team: ContextVar[str | None] = ContextVar("run_team", default=None)
"""The team of the key the current context's runs are for (None: no team)."""


def usage_of(result: ModelExecutionResult) -> RunUsage:
    meta = result.metadata or {}
    ttft = meta.get("time_to_first_token")
    return RunUsage(
        model=result.model_name,
        surface=str(meta.get("surface") or "gateway"),
        kind=str(meta.get("kind") or "generate"),
        success=result.success,
        prompt_tokens=int(meta.get("prompt_eval_count") or 0),
        completion_tokens=int(meta.get("eval_count") or result.tokens_used or 0),
        time_to_first_token=float(ttft) if isinstance(ttft, int | float) else None,
        duration=float(result.execution_time),
        backend=str(meta["backend"]) if meta.get("backend") else None,
        backend_seconds=_seconds(meta.get("total_duration")),
        load_seconds=_seconds(meta.get("load_duration")),
    )


def _seconds(value: object) -> float:
    """Ollama's nanoseconds as seconds (0.0 when absent or not a number)."""
    return value / 1e9 if isinstance(value, int | float) and value > 0 else 0.0
