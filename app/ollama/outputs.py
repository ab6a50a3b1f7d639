"""OutputManager: the seed's output persistence, over the database instead of flat files.

Where the seed returned the `Path` of a written file, these methods return the stored
record's id (which `/gateway/results/{id}` serves). Files are written only when asked:
an `output_dir` argument, or `export_outputs(directory)`.

Every seed method is synchronous as in the seed (it runs on a private event loop, so it
works inside notebooks too) and has an async twin prefixed `a` for code on an event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from app.ollama.errors import InvalidRequest
from app.ollama.metadata import GroupKind, run_metadata
from app.ollama.names import normalize_model_name
from app.ollama.stored_rows import (
    batch_row,
    benchmark_row,
    comparison_row,
    config_dict,
    execution_dict,
    execution_row,
    jsonable,
    model_spellings,
    output_summary,
    report_dict,
    results_of,
    write_json,
)
from app.ollama.types import ModelExecutionResult
from app.ollama.usage import run_principal
from app.settings import Settings
from app.storage.database_user import DatabaseUser
from app.storage.db import masked
from app.storage.group_commit import GroupCommit, loop_group_commit
from app.storage.report_writes import write_report
from app.storage.repositories import (
    CURSOR_PATTERN,
    ExecutionFilter,
    Executions,
    ModelConfigs,
    Reports,
    counts_and_sizes,
    delete_finished_jobs,
    delete_older_than,
)
from app.storage.spool import RowSpool
from app.storage.tables import (
    Batch,
    BenchmarkReport,
    Comparison,
    Execution,
    ModelConfig,
    ReportRow,
)

logger = logging.getLogger(__name__)


__all__ = ["CURSOR_PATTERN", "OUTPUT_TYPES", "OutputManager", "model_spellings"]

OUTPUT_TYPES = ("outputs", "configs", "results", "reports")
KINDS = (
    "generate", "chat", "stream", "batch_item", "benchmark", "comparison", "context", "output",
    "speech",
)  # fmt: skip
ReportKind = Literal["batch", "benchmark", "comparison"]
DEFAULT_CONFIG_NAME = "default"
GROUP_KINDS: dict[str, GroupKind] = {f"{k}_id": k for k in ("batch", "benchmark", "comparison")}


class OutputManager(DatabaseUser):
    """Stores runs, configs and reports in the gateway's database.

    `OutputManager()` uses the configured database (`GATEWAY_DATABASE_URL`); a new, empty
    database is given the current schema on first use, an out-of-date one is refused with
    a message saying to run `ollama-gateway migrate`. `base_output_dir` is where
    `export_outputs()` writes when it is given no directory.

    Writes are safe to await from `finally` blocks and cancellation paths: they run to
    their end in their own task (see `DatabaseUser._shielded`), and concurrent writes from
    any number of tasks, threads and event loops are safe.
    """

    def __init__(
        self,
        base_output_dir: str | None = None,
        *,
        database_url: str | None = None,
        ensure_schema_on_first_use: bool = True,
    ) -> None:
        super().__init__(
            database_url or Settings().database_url,
            name="output-manager",
            ensure=ensure_schema_on_first_use,
        )
        self.base_output_dir = Path(base_output_dir) if base_output_dir else None
        self._committers: dict[asyncio.AbstractEventLoop, GroupCommit[Execution]] = {}
        self.escaped_rows = 0
        """Rows of reports stored only after their text was escaped (see `escaped_count`)."""
        self.spool: RowSpool | None = None
        """Where runs go while the database does not answer (the app sets it; see spool.py)."""

    def __repr__(self) -> str:
        return f"OutputManager({masked(self.database_url)!r})"

    # -- plumbing --------------------------------------------------------------------

    async def aping(self) -> None:
        """Raise if the database does not answer a trivial query."""
        await self.db.ping()

    async def _export(self, output_dir: str | Path | None, name: str, payload: Any) -> Path | None:
        """Write `payload` as JSON to `output_dir/name` (off the event loop); None without
        a directory."""
        if output_dir is None or output_dir == "":
            return None
        return await asyncio.to_thread(write_json, Path(output_dir) / name, payload)

    # -- runs ------------------------------------------------------------------------

    async def arecord_execution(
        self,
        result: ModelExecutionResult,
        *,
        kind: str,
        batch_id: str | None = None,
        benchmark_id: str | None = None,
        comparison_id: str | None = None,
    ) -> str:
        """Store one run; returns its id, also written to `result.metadata["result_id"]`.

        `kind` is one of generate, chat, stream, batch_item, benchmark, comparison,
        context (or output, for `save_model_output`). Columns (backend, messages,
        options, done_reason, timings, token counts, status) are pulled out of the
        metadata, which is kept whole. A failed run is stored as failed, a cancelled one
        (`metadata["status"] == "cancelled"` or `error_type` "Cancelled") as cancelled.
        """
        if kind not in KINDS:
            raise InvalidRequest(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        row = execution_row(
            result,
            kind=kind,
            batch_id=batch_id,
            benchmark_id=benchmark_id,
            comparison_id=comparison_id,
        )

        async def write() -> str:
            await self._prepare()
            result_id = await self._group_commit().add(row)
            if result.metadata is None:
                result.metadata = {}
            result.metadata["result_id"] = result_id
            return result_id

        return await self._shielded(write())

    @property
    def escaped_count(self) -> int:
        """Rows stored only after their text was escaped (runs and reports)."""
        return self.escaped_rows + sum(c.escaped for c in self._committers.values())

    def _group_commit(self) -> GroupCommit[Execution]:
        """This loop's group commit (concurrent runs share a transaction)."""

        async def write_rows(rows: Sequence[Execution]) -> None:
            async with self.db.engine().begin() as connection:  # Core: no ORM session
                await Executions.insert(connection, rows)

        return loop_group_commit(self._committers, lambda: GroupCommit(write_rows, self.spool))

    async def asave_execution_result(
        self, result: ModelExecutionResult, output_dir: str | None = None
    ) -> str:
        kind = str((result.metadata or {}).get("kind") or "generate")
        result_id = await self.arecord_execution(result, kind=kind if kind in KINDS else "generate")
        await self._export(output_dir, f"result_{result_id}.json", result.to_dict())
        return result_id

    def save_execution_result(
        self, result: ModelExecutionResult, output_dir: str | None = None
    ) -> str:
        """Store a result (its kind from `metadata["kind"]`, else generate); with
        `output_dir` also write it there as JSON. Returns the stored record's id."""
        return self._run(self.asave_execution_result(result, output_dir))

    async def asave_model_output(
        self,
        model_name: str,
        prompt: str,
        response: str,
        execution_time: float,
        output_dir: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        result = ModelExecutionResult(
            model_name=model_name,
            prompt=prompt,
            response=response,
            execution_time=execution_time,
            metadata=dict(metadata or {}),
        )
        result_id = await self.arecord_execution(result, kind="output")
        await self._export(output_dir, f"output_{result_id}.json", result.to_dict())
        return result_id

    def save_model_output(
        self,
        model_name: str,
        prompt: str,
        response: str,
        execution_time: float,
        output_dir: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Store one model output (kind "output"); with `output_dir` also as a JSON file.
        Returns the stored record's id."""
        return self._run(
            self.asave_model_output(
                model_name, prompt, response, execution_time, output_dir, metadata
            )
        )

    async def aget_result(self, result_id: str) -> dict[str, Any] | None:
        """One stored run (as `list_saved_outputs("results")` shows it), or None."""
        await self._prepare()
        async with self.db.session() as session:
            row = await Executions(session).get(result_id)
            return execution_dict(row) if row is not None else None

    def get_result(self, result_id: str) -> dict[str, Any] | None:
        return self._run(self.aget_result(result_id))

    async def adelete_result(self, result_id: str) -> bool:
        """Delete one stored run; False when there is none with that id."""
        await self._prepare()
        async with self.db.session() as session:
            return await Executions(session).delete(result_id)

    def delete_result(self, result_id: str) -> bool:
        return self._run(self.adelete_result(result_id))

    async def alist_results(
        self,
        *,
        model: str | None = None,
        kind: str | None = None,
        surface: str | None = None,
        principal: str | None = None,
        success: bool | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of stored runs, newest first, and the cursor of the next page.

        `model` matches every spelling of the model; `since`/`until` may be in any offset
        (naive means UTC). Raises ValueError for a cursor that is not one of ours.
        """
        await self._prepare()
        where = ExecutionFilter(
            models=model_spellings(model) if model is not None else None,
            kind=kind,
            surface=surface,
            principal=principal,
            success=success,
            since=since,
            until=until,
        )
        async with self.db.session() as session:
            rows, next_cursor = await Executions(session).page(where, limit, cursor)
            return [execution_dict(r) for r in rows], next_cursor

    # -- configs ---------------------------------------------------------------------

    async def asave_model_config(
        self, model_name: str, config: dict[str, Any], config_name: str | None = None
    ) -> str:
        await self._prepare()
        async with self.db.session() as session:
            return await ModelConfigs(session).put(
                normalize_model_name(model_name),
                config_name or DEFAULT_CONFIG_NAME,
                jsonable(config),
            )

    def save_model_config(
        self, model_name: str, config: dict[str, Any], config_name: str | None = None
    ) -> str:
        """Store (or replace) a named config (default "default") of a model; unique per
        (model, name), the model under its normalised name. Returns the record's id."""
        return self._run(self.asave_model_config(model_name, config, config_name))

    async def aload_model_config(
        self, model_name: str, config_name: str | None = None
    ) -> dict[str, Any] | None:
        await self._prepare()
        async with self.db.session() as session:
            repo = ModelConfigs(session)
            for spelling in model_spellings(model_name):
                row = await repo.get(spelling, config_name or DEFAULT_CONFIG_NAME)
                if row is not None:
                    return dict(row.config)
            return None

    def load_model_config(
        self, model_name: str, config_name: str | None = None
    ) -> dict[str, Any] | None:
        """A model's named config (default "default"), or None."""
        return self._run(self.aload_model_config(model_name, config_name))

    # -- reports ---------------------------------------------------------------------

    async def _save_group(
        self,
        group: ReportRow,
        results: Sequence[ModelExecutionResult],
        kind: str,
        link: str,
    ) -> str:
        """Store a report and its runs in one transaction (all of it or nothing), then note
        each run's `result_id`, and the report's id as its `group_id` (see
        `app.ollama.metadata`).

        The report is filed under its runs' principal (the API key that made them). When
        the database refuses the rows as they are, they are stored once more with their
        text escaped (see `app.storage.escaping`).
        """
        rows = [execution_row(r, kind=kind, **{link: group.id}) for r in results]
        group_kind: GroupKind = GROUP_KINDS[link]
        if group.principal is None:
            group.principal = next((r.principal for r in rows if r.principal), run_principal.get())

        async def write() -> str:
            await self._prepare()
            ids, escaped = await write_report(self.db, group, rows, self.spool)
            self.escaped_rows += escaped
            for result, result_id in zip(results, ids, strict=True):
                if result.metadata is None:
                    result.metadata = {}
                meta = run_metadata(result)
                meta["result_id"] = result_id
                meta["group_id"], meta["group_kind"] = group.id, group_kind
            return group.id

        return await self._shielded(write())

    async def asave_batch_results(
        self,
        results: Sequence[ModelExecutionResult],
        batch_name: str,
        output_dir: str | None = None,
    ) -> str:
        """Store a batch and each of its runs (kind "batch_item", linked to it)."""
        row = batch_row(results, batch_name)
        batch_id = await self._save_group(row, results, "batch_item", "batch_id")
        await self._export(
            output_dir,
            f"batch_{batch_id}.json",
            {"name": batch_name, "results": [r.to_dict() for r in results]},
        )
        return batch_id

    def save_batch_results(
        self,
        results: list[ModelExecutionResult],
        batch_name: str,
        output_dir: str | None = None,
    ) -> str:
        """Store a batch and its runs; with `output_dir` also as a JSON file. Returns the
        batch's id."""
        return self._run(self.asave_batch_results(results, batch_name, output_dir))

    async def asave_benchmark_report(
        self,
        benchmark_results: dict[str, Any],
        model_name: str,
        output_dir: str | None = None,
        *,
        results: Sequence[ModelExecutionResult] | None = None,
    ) -> str:
        """Store a benchmark report and its runs (kind "benchmark", linked to it).

        The runs are `results` when given, else rebuilt from the report's
        `individual_results`.
        """
        row = benchmark_row(benchmark_results, model_name)
        report = row.report
        runs = results if results is not None else results_of(report.get("individual_results"))
        report_id = await self._save_group(row, runs, "benchmark", "benchmark_id")
        await self._export(output_dir, f"benchmark_{report_id}.json", report)
        return report_id

    def save_benchmark_report(
        self, benchmark_results: dict[str, Any], model_name: str, output_dir: str | None = None
    ) -> str:
        """Store a benchmark report (and its individual runs); with `output_dir` also as a
        JSON file. Returns its id."""
        return self._run(self.asave_benchmark_report(benchmark_results, model_name, output_dir))

    async def asave_model_comparison(
        self,
        comparison_results: dict[str, Any],
        output_dir: str | None = None,
        *,
        results: Sequence[ModelExecutionResult] | None = None,
    ) -> str:
        """Store a comparison and each model's run (kind "comparison", linked to it)."""
        row = comparison_row(comparison_results)
        report = row.report
        per_model = report.get("results")
        runs = (
            results
            if results is not None
            else results_of(list(per_model.values()) if isinstance(per_model, dict) else [])
        )
        comparison_id = await self._save_group(row, runs, "comparison", "comparison_id")
        await self._export(output_dir, f"comparison_{comparison_id}.json", report)
        return comparison_id

    def save_model_comparison(
        self, comparison_results: dict[str, Any], output_dir: str | None = None
    ) -> str:
        """Store a model comparison (and each model's run); with `output_dir` also as a
        JSON file. Returns its id."""
        return self._run(self.asave_model_comparison(comparison_results, output_dir))

    async def aget_report(
        self, kind: ReportKind, report_id: str, *, principal: str | None = None
    ) -> dict[str, Any] | None:
        """A stored batch, benchmark or comparison with its runs, or None.

        With `principal`: None unless the report was made with that API key."""
        await self._prepare()
        link = {"batch": "batch_id", "benchmark": "benchmark_id", "comparison": "comparison_id"}
        async with self.db.session() as session:
            row = await Reports(session).get(kind, report_id)
            if row is None or (principal is not None and row.principal != principal):
                return None
            runs = await Executions(session).linked(link[kind], report_id)
            return {**report_dict(kind, row), "runs": [execution_dict(r) for r in runs]}

    async def alist_reports(
        self,
        kind: ReportKind,
        *,
        model: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        principal: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of stored reports of a kind, newest first, and the next cursor.

        With `model`: reports of that model, or with a run of it (comparisons, batches
        over several models). With `principal`: only the reports made with that API key."""
        await self._prepare()
        models = model_spellings(model) if model is not None else None
        async with self.db.session() as session:
            rows, next_cursor = await Reports(session).page(
                kind, limit, cursor, models, principal=principal
            )
            return [report_dict(kind, r) for r in rows], next_cursor

    # -- listing, stats, cleanup -----------------------------------------------------

    async def alist_saved_outputs(
        self, model_name: str | None = None, output_type: str = "outputs"
    ) -> list[dict[str, Any]]:
        if output_type not in OUTPUT_TYPES:
            raise InvalidRequest(f"output_type must be one of {', '.join(OUTPUT_TYPES)}")
        await self._prepare()
        if output_type in ("outputs", "results"):
            items: list[dict[str, Any]] = []
            cursor: str | None = None
            while True:
                page, cursor = await self.alist_results(model=model_name, limit=500, cursor=cursor)
                items += page
                if cursor is None:
                    break
            return [output_summary(i) for i in items] if output_type == "outputs" else items
        if output_type == "configs":
            models = model_spellings(model_name) if model_name is not None else None
            async with self.db.session() as session:
                return [config_dict(r) for r in await ModelConfigs(session).all(models)]
        reports: list[dict[str, Any]] = []
        for kind in ("batch", "benchmark", "comparison"):
            cursor = None
            while True:
                page, cursor = await self.alist_reports(
                    kind, model=model_name, limit=500, cursor=cursor
                )
                reports += page
                if cursor is None:
                    break
        return sorted(reports, key=lambda r: r["created_at"], reverse=True)

    def list_saved_outputs(
        self, model_name: str | None = None, output_type: str = "outputs"
    ) -> list[dict[str, Any]]:
        """Stored items of one type, newest first (`model_name` matches every spelling).

        "outputs": every stored run, briefly (id, kind, model_name, success, status,
        size_bytes, created_at, response_preview); "results": every stored run in full;
        "configs": model configs; "reports": batches, benchmarks and comparisons.
        """
        return self._run(self.alist_saved_outputs(model_name, output_type))

    async def aget_output_stats(self, *, principal: str | None = None) -> dict[str, Any]:
        """The `get_output_stats` figures; with `principal`, of that API key's runs and
        reports only (configs are not anyone's: 0), without the database's URL."""
        await self._prepare()
        async with self.db.session() as session:
            runs = await counts_and_sizes(session, Execution, principal)
            configs = (0, 0) if principal else await counts_and_sizes(session, ModelConfig)
            reports = [
                await counts_and_sizes(session, table, principal)
                for table in (Batch, BenchmarkReport, Comparison)
            ]
        by_type = {
            "outputs": {"count": runs[0], "size_bytes": runs[1]},
            "results": {"count": runs[0], "size_bytes": runs[1]},
            "configs": {"count": configs[0], "size_bytes": configs[1]},
            "reports": {
                "count": sum(c for c, _ in reports),
                "size_bytes": sum(s for _, s in reports),
            },
        }
        return {
            "by_type": by_type,
            "total_count": runs[0] + configs[0] + by_type["reports"]["count"],
            "total_size_bytes": runs[1] + configs[1] + by_type["reports"]["size_bytes"],
            "database": None if principal else masked(self.database_url),
        }

    def get_output_stats(self) -> dict[str, Any]:
        """Counts and sizes (bytes of JSON) per output type, totals, and the database.

        "outputs" and "results" are the same runs, so the totals count them once.
        """
        return self._run(self.aget_output_stats())

    async def acleanup_old_outputs(self, days_old: int = 30) -> int:
        if isinstance(days_old, bool) or not isinstance(days_old, int) or days_old < 0:
            raise InvalidRequest(f"days_old must be a non-negative integer, got {days_old!r}")
        await self._prepare()
        cutoff = datetime.now(UTC) - timedelta(days=days_old)
        async with self.db.session() as session:
            removed = await delete_older_than(session, Execution, cutoff)
            for table in (Batch, BenchmarkReport, Comparison):
                removed += await delete_older_than(session, table, cutoff)
            removed += await delete_finished_jobs(session, cutoff)
        return removed

    def cleanup_old_outputs(self, days_old: int = 30) -> int:
        """Delete runs, reports and finished jobs older than `days_old` days; returns how
        many were removed.

        Model configs are settings, not outputs: they are kept.
        """
        return self._run(self.acleanup_old_outputs(days_old))

    # -- export ------------------------------------------------------------

    async def aexport_outputs(
        self, directory: str | Path | None = None, model_name: str | None = None
    ) -> list[Path]:
        """Write every stored run and report as a JSON file into `directory` (default
        `base_output_dir`); returns the files written."""
        target = directory if directory is not None else self.base_output_dir
        if target is None:
            raise InvalidRequest(
                "export_outputs needs a directory (or an OutputManager base_output_dir)"
            )
        results = await self.alist_saved_outputs(model_name, "results")
        reports = await self.alist_saved_outputs(model_name, "reports")
        files = [(f"result_{i['id']}.json", i) for i in results]
        files += [(f"{i['type']}_{i['id']}.json", i) for i in reports]
        return [await asyncio.to_thread(write_json, Path(target) / n, i) for n, i in files]

    def export_outputs(
        self, directory: str | Path | None = None, model_name: str | None = None
    ) -> list[Path]:
        """Files for users who want files: one JSON per stored run and report."""
        return self._run(self.aexport_outputs(directory, model_name))
