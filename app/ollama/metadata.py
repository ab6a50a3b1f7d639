"""What a run's `ModelExecutionResult.metadata` holds: every key, named and documented.

The seed types `metadata` as a plain dict, and it stays one at run time; `RunMetadata`
is its shape for the type checker and for readers (`run_metadata(result)`). Writers in
the core fill it; the REST layer, storage and metrics read it.

A failed run names its error kind (`ErrorKind`) in `error_type`; `ERROR_CLASSES` maps each
kind to the exception class it stands for, so a caller maps failures by class (the REST
layer's statuses do), never by comparing names.

A run that belongs to a group (a batch, a benchmark or a comparison) and was stored with
it carries the group's id in one place for all three: `group_id`, with `group_kind`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypedDict, cast

from app.backends.errors import (
    BackendBusy,
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    StreamInterrupted,
)
from app.ollama.errors import RunCancelled
from app.ollama.types import ModelExecutionResult

__all__ = [
    "ERROR_CLASSES",
    "ErrorKind",
    "GroupKind",
    "ResumePoint",
    "RunMetadata",
    "RunMode",
    "Surface",
    "as_plain_dict",
    "error_class",
    "error_kind",
    "group_id_of",
    "run_metadata",
]

ErrorKind = Literal[
    "BackendError",
    "BackendUnavailable",
    "BackendBusy",
    "BackendTimeout",
    "StreamInterrupted",
    "Cancelled",
]
"""Why a run failed: the backend said no or the exchange failed (`BackendError`), nobody
answered (`BackendUnavailable`), every slot was taken (`BackendBusy`), it took too long
(`BackendTimeout`), the reply stopped before its end (`StreamInterrupted`), or the caller
left (`Cancelled`)."""

ERROR_CLASSES: dict[ErrorKind, type[Exception]] = {
    "BackendError": BackendError,
    "BackendUnavailable": BackendUnavailable,
    "BackendBusy": BackendBusy,
    "BackendTimeout": BackendTimeout,
    "StreamInterrupted": StreamInterrupted,
    "Cancelled": RunCancelled,
}

GroupKind = Literal["batch", "benchmark", "comparison"]
RunMode = Literal["http", "cli", "relay"]
"""Through the backends' HTTP API, the `ollama` command line, or relayed as sent (`/api`)."""
Surface = Literal["gateway", "ollama", "openai"]
"""The API a run came through."""


class ResumePoint(TypedDict):
    """One seam of a resumed stream: the answer was cut on `backend` and continued."""

    backend: str
    """The backend that failed."""
    error: str
    """How it failed."""
    after_tokens: int
    """Tokens (pieces) the caller had received when it failed."""
    after_chars: int
    """Characters of answer text the caller had received."""
    pause: float | None
    """Seconds between the last piece before the seam and the first after it (None: no
    piece came after it)."""


class RunMetadata(TypedDict, total=False):
    """The keys of `ModelExecutionResult.metadata` (each optional)."""

    # -- what was asked --------------------------------------------------------------
    kind: str
    """generate, chat, stream, context, batch_item, benchmark or comparison."""
    surface: Surface
    """The API the run came through (absent: the Python API or `/gateway`)."""
    mode: RunMode
    request: dict[str, Any]
    """The request as sent: options, system, format, keep_alive, timeout, stream."""
    request_extra: dict[str, Any]
    """Fields of a relayed `/api` body that are neither input nor options (think, tools)."""
    messages: list[dict[str, Any]]
    """A chat's history as sent."""
    question: str
    """A context run's question (the prompt holds the documents too)."""
    context_template: str
    """A context run's prompt template, by name."""
    context_docs_total: int
    """Documents given to a context run."""
    context_docs_used: list[int]
    """The documents that went into the prompt, by index."""
    context_docs_truncated: list[int]
    """Documents cut to fit the context window, by index."""
    context_docs_dropped: list[int]
    """Documents left out for lack of room, by index."""
    context_estimated_tokens: int
    """The prompt's estimated length in tokens."""
    ignored_options: list[str]
    """Options the `ollama` command line cannot take, left out in CLI mode."""
    principal: str
    """The API key (by name) the run was made for."""
    batch_index: int
    """The run's place in its batch."""

    # -- where and how it ran ----------------------------------------------------------
    backend: str | None
    """The backend's URL."""
    failed_over_from: list[str]
    """Backends that failed before this one answered (`url: error`)."""
    resumed: bool
    """A streamed run whose backend failed mid-answer, continued on another backend."""
    backends: list[str]
    """A resumed run: every backend that wrote part of the answer, in order (`backend`
    is the last)."""
    resumes: list[ResumePoint]
    """A resumed run: where the answer was cut and continued, seam by seam."""
    not_resumed: str
    """Why a streamed run cut short mid-answer could not continue on another backend."""
    time_to_first_token: float
    """Seconds from the request to the first token."""
    tokens_per_second: float
    """Generated tokens per second of generation (eval_count / eval_duration)."""
    chunks: int
    """Pieces received."""
    thinking: str
    """The model's thinking, for models that think."""
    tool_calls: list[dict[str, Any]]
    """Tools the model called."""

    # -- Ollama's own counters (nanoseconds and tokens), from the final reply ------------
    total_duration: int
    load_duration: int
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int
    done_reason: str

    # -- how it ended --------------------------------------------------------------------
    error_type: ErrorKind
    """Why it failed (see `ERROR_CLASSES`)."""
    error_status: int
    """The backend's HTTP status, when it answered with an error."""
    partial_response: str
    """What a failed run had produced before it failed."""
    status: Literal["cancelled"]
    """Set on a run its caller abandoned."""

    # -- where it is stored ----------------------------------------------------------------
    result_id: str
    """The stored run's id (`/gateway/results/{id}`)."""
    group_id: str
    """The stored batch, benchmark or comparison the run belongs to."""
    group_kind: GroupKind
    """Which of the three `group_id` names."""
    storage_error: str
    """Why the run could not be stored (the run itself is still answered)."""


def run_metadata(result: ModelExecutionResult) -> RunMetadata:
    """`result.metadata` as the `RunMetadata` it is (an empty one when there is none)."""
    return cast(RunMetadata, result.metadata or {})


def as_plain_dict(metadata: RunMetadata) -> dict[str, Any]:
    """The metadata as the seed's `ModelExecutionResult.metadata` type (the same dict)."""
    return cast(dict[str, Any], metadata)


def error_kind(error: BaseException) -> ErrorKind:
    """The kind of an exception that ended a run: its most specific class in the table."""
    for kind, cls in reversed(ERROR_CLASSES.items()):
        if isinstance(error, cls):
            return kind
    return "BackendError"


def error_class(kind: object) -> type[Exception] | None:
    """The exception class an `error_type` stands for; None for an unknown or no kind."""
    return ERROR_CLASSES.get(cast(ErrorKind, kind)) if isinstance(kind, str) else None


def group_id_of(runs: Iterable[Mapping[str, Any] | ModelExecutionResult]) -> str | None:
    """The id of the group these runs were stored in (None when it was not stored)."""
    for run in runs:
        meta = run.metadata if isinstance(run, ModelExecutionResult) else run.get("metadata")
        if isinstance(meta, Mapping) and isinstance(meta.get("group_id"), str):
            return str(meta["group_id"])
    return None
