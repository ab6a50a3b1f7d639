"""Storage glue of the core: what it needs from `OutputManager` (`ResultStore`, a Protocol)
and how it stores through it without ever failing a run (`store_result`, `save_group`).

The core depends on this narrow surface, not on the storage implementation, so either can
change behind it and a test can hand the manager any object that stores results.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from app.ollama.errors import InvalidRequest
from app.ollama.types import ModelExecutionResult
from app.storage.outage import DatabaseUnavailable

__all__ = ["ResultStore", "SaveResult", "save_group", "store_result"]

logger = logging.getLogger(__name__)


class ResultStore(Protocol):
    def save_execution_result(
        self, result: ModelExecutionResult, output_dir: str | None = None
    ) -> str: ...

    async def arecord_execution(
        self,
        result: ModelExecutionResult,
        *,
        kind: str,
        batch_id: str | None = None,
        benchmark_id: str | None = None,
        comparison_id: str | None = None,
    ) -> str: ...

    async def asave_batch_results(
        self, results: Sequence[ModelExecutionResult], batch_name: str
    ) -> str: ...

    async def asave_benchmark_report(
        self,
        benchmark_results: dict[str, Any],
        model_name: str,
        *,
        results: Sequence[ModelExecutionResult] | None = None,
    ) -> str: ...

    async def asave_model_comparison(
        self,
        comparison_results: dict[str, Any],
        *,
        results: Sequence[ModelExecutionResult] | None = None,
    ) -> str: ...


class SaveResult(Protocol):
    """How the execution core stores one finished run (`OllamaManager.store_result`)."""

    def __call__(
        self,
        result: ModelExecutionResult,
        *,
        kind: str,
        output_dir: str | None = None,
        links: Mapping[str, str | None] | None = None,
    ) -> Awaitable[str | None]: ...


async def store_result(
    store: ResultStore | None,
    result: ModelExecutionResult,
    *,
    kind: str,
    output_dir: str | None = None,
    links: Mapping[str, str | None] | None = None,
) -> str | None:
    """Store one result in `store`; a storage failure is logged and noted, never raised,
    except `DatabaseUnavailable`: the database does not answer and the result cannot be
    kept until it does (the spool is full), so the caller must not be told it was stored.

    The stored id goes to `metadata["result_id"]`. With `output_dir` the storage's sync
    `save_execution_result` is used (it writes an export there).
    """
    if store is None:
        return None
    if result.metadata is None:
        result.metadata = {}
    try:
        if output_dir is not None:
            result_id = await asyncio.to_thread(store.save_execution_result, result, output_dir)
        else:
            result_id = await store.arecord_execution(result, kind=kind, **dict(links or {}))
    except DatabaseUnavailable:
        logger.error("a %s result could not be stored: the database does not answer", kind)
        raise
    except Exception as exc:
        logger.exception("storing a %s result failed", kind)
        result.metadata["storage_error"] = _error_text(exc)
        return None
    result.metadata["result_id"] = result_id
    return result_id


async def save_group(
    store: ResultStore | None,
    save: Callable[[ResultStore], Awaitable[str]],
    results: Sequence[ModelExecutionResult],
    *,
    kind: str,
) -> str | None:
    """Store a group report (batch, benchmark, comparison) and its runs, linked to it.

    The storage writes each run's `result_id` and group id into its metadata. A storage
    failure is logged and noted on the runs, never raised (but for `DatabaseUnavailable`,
    as in `store_result`).
    """
    if store is None:
        return None
    try:
        return await save(store)
    except DatabaseUnavailable:
        logger.error("a %s report could not be stored: the database does not answer", kind)
        raise
    except Exception as exc:
        logger.exception("storing a %s report failed", kind)
        for result in results:
            if result.metadata is not None:
                result.metadata["storage_error"] = _error_text(exc)
        return None


def _error_text(exc: Exception) -> str:
    """What a run's `storage_error` tells its caller: the gateway's words; the database's
    own (which can hold SQL and the run's text) go to the log."""
    if isinstance(exc, InvalidRequest):
        return f"the result could not be stored: {exc}"
    return "the result could not be stored: the database failed (see the gateway's log)"
