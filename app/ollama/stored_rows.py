"""Rows and records: how runs, reports and configs become database rows and come back as
the dicts the API and `list_saved_outputs` show.

Mappers only, no database access (that is `OutputManager`'s): `execution_row` builds the
`executions` row of a `ModelExecutionResult` (columns pulled out of its metadata, all of it
kept), the `*_dict` functions read rows back, `model_spellings` gives every spelling of a
model name filters must match, and `results_of` rebuilds runs from a report's JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.ollama.names import DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG, normalize_model_name
from app.ollama.types import ModelExecutionResult
from app.storage.repositories import json_size, new_id
from app.storage.tables import (
    Batch,
    BenchmarkReport,
    Comparison,
    Execution,
    ModelConfig,
    ReportRow,
    built_row,
)

__all__ = [
    "batch_row",
    "benchmark_row",
    "clean_text",
    "comparison_row",
    "config_dict",
    "execution_dict",
    "execution_row",
    "jsonable",
    "model_spellings",
    "output_summary",
    "report_dict",
    "results_of",
    "write_json",
]


def execution_row(
    result: ModelExecutionResult,
    *,
    kind: str,
    batch_id: str | None = None,
    benchmark_id: str | None = None,
    comparison_id: str | None = None,
) -> Execution:
    """The executions row of a result: columns pulled out of its metadata, all of it kept.

    The metadata is encoded once: its JSON round trip (`jsonable`) gives the `meta`
    column, the `messages` and `options` columns (parts of it) and its share of
    `size_bytes`."""
    meta_text = clean_text(json.dumps(result.metadata or {}, default=str, ensure_ascii=False))
    meta: dict[str, Any] = json.loads(meta_text)
    request = next((meta[k] for k in ("request", "options") if isinstance(meta.get(k), dict)), None)
    error_type = meta.get("error_type")
    if result.success:
        status = "succeeded"
    elif error_type == "Cancelled" or meta.get("status") == "cancelled":
        status = "cancelled"
    else:
        status = "failed"
    values = dict(
        id=new_id(),
        kind=kind,
        surface=str(meta.get("surface") or "gateway"),
        principal=_str_or_none(meta.get("principal")),
        model=clean_text(result.model_name),
        backend=_str_or_none(meta.get("backend")),
        prompt=clean_text(result.prompt),
        messages=meta["messages"] if isinstance(meta.get("messages"), list) else None,
        options=request,
        response=clean_text(result.response),
        success=bool(result.success),
        status=status,
        error=clean_text(result.error_message) if result.error_message is not None else None,
        error_type=_str_or_none(error_type),
        done_reason=_str_or_none(meta.get("done_reason")),
        execution_time=float(result.execution_time),
        time_to_first_token=_float_or_none(meta.get("time_to_first_token")),
        tokens_used=_int_or_none(result.tokens_used),
        prompt_tokens=_int_or_none(meta.get("prompt_eval_count")),
        tokens_per_second=_float_or_none(meta.get("tokens_per_second")),
        total_duration_ns=_int_or_none(meta.get("total_duration")),
        meta=meta,
        batch_id=batch_id,
        benchmark_id=benchmark_id,
        comparison_id=comparison_id,
        created_at=datetime.now(UTC),
        size_bytes=result_size(result, meta_text if result.metadata is not None else None),
    )
    return built_row(Execution, values)


def result_size(result: ModelExecutionResult, meta_text: str | None) -> int:
    """`json_size(result.to_dict())` without copying the result (`asdict`) or encoding its
    metadata again: `meta_text` is the metadata's JSON (None when it has none). Lone
    surrogates, U+FFFD in `meta_text`, take three bytes either way."""
    head = {
        "model_name": result.model_name,
        "prompt": result.prompt,
        "response": result.response,
        "execution_time": result.execution_time,
        "tokens_used": result.tokens_used,
        "success": result.success,
        "error_message": result.error_message,
        "metadata": None,
    }
    size = json_size(head)
    if meta_text is not None:
        size += len(meta_text.encode("utf-8")) - len("null")
    return size


def batch_row(results: Sequence[ModelExecutionResult], batch_name: str) -> Batch:
    """The `batches` row of a batch's runs."""
    models = {r.model_name for r in results}
    summary = {
        "total_execution_time": sum(r.execution_time for r in results),
        "total_tokens": sum(r.tokens_used or 0 for r in results),
    }
    return Batch(
        id=new_id(),
        name=clean_text(batch_name)[:200],
        model=clean_text(models.pop()) if len(models) == 1 else None,
        total=len(results),
        succeeded=sum(bool(r.success) for r in results),
        failed=sum(not r.success for r in results),
        summary=summary,
        size_bytes=json_size([r.to_dict() for r in results]),
        created_at=datetime.now(UTC),
    )


def benchmark_row(benchmark_results: dict[str, Any], model_name: str) -> BenchmarkReport:
    """The `benchmark_reports` row of a report (`ModelRunner.benchmark_model`'s)."""
    report = jsonable(benchmark_results)
    return BenchmarkReport(
        id=new_id(),
        model=clean_text(model_name),
        report=report,
        size_bytes=json_size(report),
        created_at=datetime.now(UTC),
    )


def comparison_row(comparison_results: dict[str, Any]) -> Comparison:
    """The `comparisons` row of a report (`ModelRunner.create_model_comparison`'s)."""
    report = jsonable(comparison_results)
    per_model = report.get("results") if isinstance(report.get("results"), dict) else {}
    summary = report.get("summary") if isinstance(report.get("summary"), dict) else {}
    return Comparison(
        id=new_id(),
        models=list(per_model),
        prompt=str(summary.get("prompt", "")),
        report=report,
        size_bytes=json_size(report),
        created_at=datetime.now(UTC),
    )


def execution_dict(row: Execution) -> dict[str, Any]:
    """A stored run as the API and `list_saved_outputs("results")` show it."""
    return {
        "id": row.id,
        "kind": row.kind,
        "surface": row.surface,
        "principal": row.principal,
        "model_name": row.model,
        "prompt": row.prompt,
        "response": row.response,
        "execution_time": row.execution_time,
        "tokens_used": row.tokens_used,
        "success": row.success,
        "status": row.status,
        "error_message": row.error,
        "metadata": row.meta,
        "backend": row.backend,
        "batch_id": row.batch_id,
        "benchmark_id": row.benchmark_id,
        "comparison_id": row.comparison_id,
        "size_bytes": row.size_bytes,
        "created_at": row.created_at.isoformat(),
    }


def output_summary(item: dict[str, Any]) -> dict[str, Any]:
    """A stored run in brief, as `list_saved_outputs("outputs")` lists it."""
    keys = ("id", "kind", "model_name", "success", "status", "size_bytes", "created_at")
    return {**{k: item[k] for k in keys}, "response_preview": item["response"][:200]}


def report_dict(kind: str, row: ReportRow) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": row.id,
        "type": kind,
        "principal": row.principal,
        "size_bytes": row.size_bytes,
        "created_at": row.created_at.isoformat(),
    }
    if isinstance(row, Batch):
        base.update(
            name=row.name,
            model=row.model,
            total=row.total,
            succeeded=row.succeeded,
            failed=row.failed,
            summary=row.summary,
        )
    elif isinstance(row, BenchmarkReport):
        base.update(model=row.model, report=row.report)
    else:
        base.update(models=row.models, prompt=row.prompt, report=row.report)
    return base


def config_dict(row: ModelConfig) -> dict[str, Any]:
    return {
        "id": row.id,
        "model": row.model,
        "config_name": row.config_name,
        "config": row.config,
        "size_bytes": row.size_bytes,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }


def model_spellings(name: str) -> list[str]:
    """The names one model is stored under: `llama3.1`, `llama3.1:latest`,
    `library/llama3.1`, ... (Ollama treats them as one model; see `app.ollama.names`).

    Filters match any of them, so `list_saved_outputs("llama3.1")` finds runs asked for as
    `llama3.1:latest` and the other way round, and the `model` index still serves the query.
    """
    try:
        normalized = normalize_model_name(name)
    except ValueError:
        return [name]
    path, tag = normalized.rsplit(":", 1)
    parts = path.split("/")
    if len(parts) == 1:
        paths = [path, f"{DEFAULT_NAMESPACE}/{path}", f"{DEFAULT_HOST}/{DEFAULT_NAMESPACE}/{path}"]
    elif len(parts) == 2:
        paths = [path, f"{DEFAULT_HOST}/{path}"]
    else:
        paths = [path]
    tags = [f":{tag}", ""] if tag == DEFAULT_TAG else [f":{tag}"]
    spellings = [p + t for p in paths for t in tags]
    return list(dict.fromkeys([name, *spellings]))


def results_of(items: Any) -> list[ModelExecutionResult]:
    """Runs rebuilt from a report's JSON (`individual_results`, a comparison's results);
    entries that are not runs are skipped, odd field types coerced."""
    out = []
    for item in items or []:
        if not isinstance(item, dict) or not {"model_name", "prompt", "response"} <= set(item):
            continue
        metadata = item.get("metadata")
        error = item.get("error_message")
        out.append(
            ModelExecutionResult(
                model_name=str(item["model_name"]),
                prompt=str(item["prompt"]),
                response=str(item["response"]),
                execution_time=_float_or_none(item.get("execution_time")) or 0.0,
                tokens_used=_int_or_none(item.get("tokens_used")),
                success=bool(item.get("success", True)),
                error_message=None if error is None else str(error),
                metadata=dict(metadata) if isinstance(metadata, dict) else None,
            )
        )
    return out


_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """Text a database can store: lone surrogates (valid in JSON escapes, not in UTF-8)
    become U+FFFD, so the record is kept rather than refused."""
    return _SURROGATE.sub("\ufffd", text)


def jsonable(value: Any) -> Any:
    """Round-trip through JSON so only JSON types (and storable text) reach a JSON column."""
    return json.loads(clean_text(json.dumps(value, default=str, ensure_ascii=False)))


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _float_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def write_json(path: Path, payload: Any) -> Path:
    """`payload` as an indented JSON file (an export), its directory made as needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(payload, indent=2, default=str, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return path
