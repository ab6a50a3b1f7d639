"""What a run's `ModelExecutionResult.metadata` holds, for the core and the layers above:
its shape (`RunMetadata` and the kinds it names, defined with the stored run's column in
`app.storage.run_metadata` and given here to the layers that may not import storage), and
`run_metadata(result)` to read it typed. Writers in the core fill it; the REST layer,
storage and metrics read it.

A failed run names its error kind (`ErrorKind`) in `error_type`; `ERROR_CLASSES` maps each
kind to the exception class it stands for, so a caller maps failures by class (the REST
layer's statuses do), never by comparing names.

A run that belongs to a group (a batch, a benchmark or a comparison) and was stored with
it carries the group's id in one place for all three: `group_id`, with `group_kind`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

from app.backends.errors import (
    BackendBusy,
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    StreamInterrupted,
)
from app.ollama.errors import RunCancelled
from app.ollama.types import ModelExecutionResult
from app.storage.run_metadata import (
    ErrorKind,
    GroupKind,
    ResumePoint,
    RunMetadata,
    RunMode,
    Surface,
)

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

ERROR_CLASSES: dict[ErrorKind, type[Exception]] = {
    "BackendError": BackendError,
    "BackendUnavailable": BackendUnavailable,
    "BackendBusy": BackendBusy,
    "BackendTimeout": BackendTimeout,
    "StreamInterrupted": StreamInterrupted,
    "Cancelled": RunCancelled,
}


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
