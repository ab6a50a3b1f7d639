"""What the core needs from `OutputManager`, as a Protocol.

The core depends on this narrow surface, not on the storage implementation, so either can
change behind it and a test can hand the manager any object that stores results.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from app.ollama.types import ModelExecutionResult

__all__ = ["ResultStore"]


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
