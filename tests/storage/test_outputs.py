"""OutputManager over SQLite and PostgreSQL: every seed method, and nothing lost."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest

from app.ollama import ModelExecutionResult, OutputManager

T = TypeVar("T")


def result(i: int = 0, *, success: bool = True, model: str = "llama3.1:8b") -> ModelExecutionResult:
    return ModelExecutionResult(
        model_name=model,
        prompt=f"prompt {i}",
        response=f"response {i}" if success else "",
        execution_time=0.1 + i / 1000,
        tokens_used=10 + i,
        success=success,
        error_message=None if success else "model 'x' not found",
        metadata={
            "backend": "http://127.0.0.1:11434",
            "done_reason": "stop",
            "prompt_eval_count": 5,
            "tokens_per_second": 42.0,
            "request": {"options": {"temperature": 0.7}},
        },
    )


@pytest.fixture
def outputs(db_url: str) -> Iterator[OutputManager]:
    manager = OutputManager(database_url=db_url)
    yield manager
    manager.close()


def in_loop(outputs: OutputManager, coro: Coroutine[Any, Any, T]) -> T:
    """Run an async method on a fresh loop, then dispose that loop's engine."""

    async def run() -> T:
        try:
            return await coro
        finally:
            await outputs.db.dispose()

    return asyncio.run(run())


def test_a_saved_result_comes_back_with_its_columns(outputs: OutputManager) -> None:
    run = result(1)
    result_id = outputs.save_execution_result(run)
    assert run.metadata is not None and run.metadata["result_id"] == result_id
    [listed] = outputs.list_saved_outputs(output_type="results")
    assert listed["id"] == result_id
    assert listed["response"] == "response 1" and listed["tokens_used"] == 11
    assert listed["backend"] == "http://127.0.0.1:11434" and listed["status"] == "succeeded"


def test_outputs_filter_by_model(outputs: OutputManager) -> None:
    outputs.save_model_output("llama3.1:8b", "p", "r", 0.5, metadata={"note": "x"})
    outputs.save_model_output("qwen2.5:0.5b", "p", "r", 0.5)
    assert [o["model_name"] for o in outputs.list_saved_outputs("qwen2.5:0.5b")] == ["qwen2.5:0.5b"]
    assert len(outputs.list_saved_outputs()) == 2


def test_failed_and_cancelled_runs_are_stored_as_such(outputs: OutputManager) -> None:
    failed = result(2, success=False)
    cancelled = result(3, success=False)
    assert cancelled.metadata is not None
    cancelled.metadata.update(error_type="Cancelled", partial_response="half an ans")
    outputs.save_execution_result(failed)
    outputs.save_execution_result(cancelled)
    by_prompt = {r["prompt"]: r for r in outputs.list_saved_outputs(output_type="results")}
    assert by_prompt["prompt 2"]["status"] == "failed"
    assert by_prompt["prompt 3"]["status"] == "cancelled"
    assert by_prompt["prompt 3"]["metadata"]["partial_response"] == "half an ans"


def test_model_configs_are_unique_per_model_and_name(outputs: OutputManager) -> None:
    first = outputs.save_model_config("llama3.1:8b", {"temperature": 0.1})
    again = outputs.save_model_config("llama3.1:8b", {"temperature": 0.2})
    named = outputs.save_model_config("llama3.1:8b", {"top_k": 5}, config_name="coding")
    assert first == again != named
    assert outputs.load_model_config("llama3.1:8b") == {"temperature": 0.2}
    assert outputs.load_model_config("llama3.1:8b", "coding") == {"top_k": 5}
    assert outputs.load_model_config("nope") is None
    assert len(outputs.list_saved_outputs(output_type="configs")) == 2


def test_batches_benchmarks_and_comparisons_store_their_runs(outputs: OutputManager) -> None:
    runs = [result(i) for i in range(3)]
    batch_id = outputs.save_batch_results(runs, "nightly")
    report = {"avg_execution_time": 0.1, "individual_results": [result(9).to_dict()]}
    benchmark_id = outputs.save_benchmark_report(report, "llama3.1:8b")
    comparison = {
        "results": {"a:1b": result(7, model="a:1b").to_dict()},
        "summary": {"prompt": "p", "fastest_model": "a:1b"},
    }
    comparison_id = outputs.save_model_comparison(comparison)
    assert all(r.metadata and r.metadata["group_id"] == batch_id for r in runs)
    assert all(r.metadata and r.metadata["group_kind"] == "batch" for r in runs)
    kinds = {r["type"]: r["id"] for r in outputs.list_saved_outputs(output_type="reports")}
    assert kinds == {"batch": batch_id, "benchmark": benchmark_id, "comparison": comparison_id}
    batch = in_loop(outputs, outputs.aget_report("batch", batch_id))
    assert batch is not None and [r["prompt"] for r in batch["runs"]] == [
        "prompt 0",
        "prompt 1",
        "prompt 2",
    ]
    assert batch["succeeded"] == 3 and batch["name"] == "nightly"
    bench = in_loop(outputs, outputs.aget_report("benchmark", benchmark_id))
    assert bench is not None and bench["report"]["avg_execution_time"] == 0.1
    assert [r["kind"] for r in bench["runs"]] == ["benchmark"]


def test_stats_count_and_size_each_type(outputs: OutputManager) -> None:
    outputs.save_execution_result(result(1))
    outputs.save_model_config("m:1b", {"a": 1})
    stats = outputs.get_output_stats()
    assert stats["by_type"]["results"]["count"] == 1
    assert stats["by_type"]["configs"]["count"] == 1
    assert stats["by_type"]["reports"]["count"] == 0
    assert stats["by_type"]["results"]["size_bytes"] > 0
    assert stats["total_count"] == 2


def test_cleanup_removes_only_old_outputs(outputs: OutputManager) -> None:
    outputs.save_execution_result(result(1))
    outputs.save_model_config("m:1b", {"a": 1})
    assert outputs.cleanup_old_outputs(days_old=1) == 0
    assert outputs.cleanup_old_outputs(days_old=0) == 1
    assert outputs.list_saved_outputs() == []
    assert len(outputs.list_saved_outputs(output_type="configs")) == 1
    with pytest.raises(ValueError):
        outputs.cleanup_old_outputs(days_old=-1)


def test_pages_walk_every_result_once_newest_first(outputs: OutputManager) -> None:
    for i in range(7):
        outputs.save_execution_result(result(i))

    async def walk() -> list[str]:
        seen: list[str] = []
        cursor = None
        while True:
            page, cursor = await outputs.alist_results(limit=3, cursor=cursor)
            seen += [r["prompt"] for r in page]
            if cursor is None:
                return seen

    assert in_loop(outputs, walk()) == [f"prompt {i}" for i in reversed(range(7))]


def test_text_a_database_cannot_hold_is_kept_with_replacement(outputs: OutputManager) -> None:
    run = result(1)
    run.prompt = "lone \udc00 surrogate"
    outputs.save_execution_result(run)
    [stored] = outputs.list_saved_outputs(output_type="results")
    assert stored["prompt"] == "lone \ufffd surrogate"


def test_export_writes_a_file_per_run_and_report(outputs: OutputManager, tmp_path: Path) -> None:
    outputs.save_execution_result(result(1), output_dir=str(tmp_path / "direct"))
    assert len(list((tmp_path / "direct").glob("result_*.json"))) == 1
    outputs.save_batch_results([result(2)], "b")
    files = outputs.export_outputs(tmp_path / "export")
    names = sorted(p.name.split("_")[0] for p in files)
    assert names == ["batch", "result", "result"]
    assert json.loads(files[0].read_text())["id"]


def test_a_default_manager_uses_gateway_database_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/from-env.db"
    monkeypatch.setenv("GATEWAY_DATABASE_URL", url)
    manager = OutputManager()
    try:
        manager.save_execution_result(result(1))
        assert manager.database_url == url and (tmp_path / "from-env.db").exists()
    finally:
        manager.close()


def test_a_model_is_found_under_every_spelling_of_its_name(outputs: OutputManager) -> None:
    outputs.save_execution_result(result(1, model="llama3.1"))
    outputs.save_execution_result(result(2, model="library/llama3.1:latest"))
    outputs.save_execution_result(result(3, model="llama3.1:8b"))
    for spelling in ("llama3.1", "llama3.1:latest", "registry.ollama.ai/library/llama3.1"):
        found = outputs.list_saved_outputs(spelling, output_type="results")
        assert sorted(r["prompt"] for r in found) == ["prompt 1", "prompt 2"], spelling
    outputs.save_model_config("llama3.1", {"temperature": 0.3})
    assert outputs.load_model_config("library/llama3.1:latest") == {"temperature": 0.3}
    [config] = outputs.list_saved_outputs("llama3.1", output_type="configs")
    assert config["model"] == "llama3.1:latest"


def test_reports_of_a_model_include_comparisons_and_batches_with_its_runs(
    outputs: OutputManager,
) -> None:
    comparison = {
        "results": {m: result(i, model=m).to_dict() for i, m in enumerate(["a:1b", "b:1b"])},
        "summary": {"prompt": "p"},
    }
    comparison_id = outputs.save_model_comparison(comparison)
    batch_id = outputs.save_batch_results([result(1, model="b:1b"), result(2, model="c:1b")], "mix")
    outputs.save_benchmark_report({"individual_results": []}, "a:1b")
    of_b = {r["id"] for r in outputs.list_saved_outputs("b:1b", output_type="reports")}
    assert of_b == {comparison_id, batch_id}
    assert {r["type"] for r in outputs.list_saved_outputs("a:1b", output_type="reports")} == {
        "comparison",
        "benchmark",
    }
    assert outputs.list_saved_outputs("d:1b", output_type="reports") == []


def test_times_are_utc_and_filters_take_any_offset(outputs: OutputManager) -> None:
    result_id = outputs.save_execution_result(result(1))
    stored = outputs.get_result(result_id)
    assert stored is not None
    created = datetime.fromisoformat(stored["created_at"])
    assert created.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=1)
    east, west = timezone(timedelta(hours=5)), timezone(timedelta(hours=-5))
    before = (created - timedelta(seconds=30)).astimezone(east)
    after = (created + timedelta(seconds=30)).astimezone(west)

    async def ids(**where: datetime) -> list[str]:
        page, _ = await outputs.alist_results(**where)
        return [r["id"] for r in page]

    assert in_loop(outputs, ids(since=before)) == [result_id]
    assert in_loop(outputs, ids(since=after)) == []
    assert in_loop(outputs, ids(until=after)) == [result_id]
    assert in_loop(outputs, ids(since=before.replace(tzinfo=None) - timedelta(hours=5))) == [
        result_id
    ]


def test_a_result_is_fetched_and_deleted_by_id(outputs: OutputManager) -> None:
    result_id = outputs.save_execution_result(result(1))
    fetched = outputs.get_result(result_id)
    assert fetched is not None and fetched["prompt"] == "prompt 1"
    assert outputs.delete_result(result_id)
    assert outputs.get_result(result_id) is None
    assert not outputs.delete_result(result_id)
