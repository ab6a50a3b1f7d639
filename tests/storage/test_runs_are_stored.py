"""Runs of OllamaManager and ModelRunner land in the database and come back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx
import pytest

from app.ollama import ModelRunner, OllamaManager, OutputManager
from app.ollama.metadata import group_id_of
from app.settings import Settings


@pytest.fixture
def stored(db_url: str, emulator_url: str) -> Iterator[tuple[OllamaManager, OutputManager]]:
    outputs = OutputManager(database_url=db_url)
    manager = OllamaManager(
        base_url=emulator_url,
        auto_start_server=False,
        output_manager=outputs,
        settings=Settings(backends=[emulator_url], database_url=db_url, _env_file=None),
    )
    yield manager, outputs
    manager.cleanup()
    outputs.close()


def test_run_model_results_come_back_through_list_saved_outputs(
    stored: tuple[OllamaManager, OutputManager],
) -> None:
    manager, outputs = stored
    ok = manager.run_model("llama3.1:8b", "Explain recursion.", save_output=True)
    failed = manager.run_model("no-such:1b", "x")
    unsaved = manager.run_model("llama3.1:8b", "not stored", save_output=False)
    assert ok.success and not failed.success and unsaved.success
    listed = {o["id"]: o for o in outputs.list_saved_outputs("llama3.1:8b")}
    assert ok.metadata is not None and ok.metadata["result_id"] in listed
    assert listed[ok.metadata["result_id"]]["response_preview"] == ok.response[:200]
    results = {r["prompt"]: r for r in outputs.list_saved_outputs(output_type="results")}
    assert "not stored" not in results
    assert results["x"]["status"] == "failed" and "no-such:1b" in results["x"]["error_message"]


def test_runner_batches_and_benchmarks_are_stored_with_their_runs(
    stored: tuple[OllamaManager, OutputManager],
) -> None:
    manager, outputs = stored
    runner = ModelRunner(manager)
    batch = runner.run_batch("llama3.1:8b", ["one", "two", "three"], max_concurrent=2)
    report = runner.benchmark_model("llama3.1:8b", ["a", "b"])
    comparison = runner.create_model_comparison(["llama3.1:8b", "qwen2.5:0.5b"], "hi")
    reports = {r["type"]: r for r in outputs.list_saved_outputs(output_type="reports")}
    assert set(reports) == {"batch", "benchmark", "comparison"}
    assert reports["batch"]["total"] == 3
    # one place for the group's id, the same for all three: each run's `group_id`
    assert group_id_of(report["individual_results"]) == reports["benchmark"]["id"]
    assert group_id_of(comparison["results"].values()) == reports["comparison"]["id"]
    assert group_id_of(batch) == reports["batch"]["id"]
    kinds = sorted(r["kind"] for r in outputs.list_saved_outputs(output_type="results"))
    assert kinds == ["batch_item"] * 3 + ["benchmark"] * 2 + ["comparison"] * 2
    assert all(r.metadata and r.metadata["group_id"] == reports["batch"]["id"] for r in batch)


def test_a_streamed_run_is_stored_once_it_ends(
    stored: tuple[OllamaManager, OutputManager],
) -> None:
    manager, outputs = stored
    pieces: list[str] = []
    streamed = ModelRunner(manager).run_streaming(
        "llama3.1:8b", "Tell me a story.", chunk_callback=lambda c: pieces.append(c.content)
    )
    assert streamed.success and streamed.metadata is not None
    [row] = outputs.list_saved_outputs(output_type="results")
    assert row["id"] == streamed.metadata["result_id"]
    assert row["kind"] == "stream" and row["response"] == "".join(pieces) == streamed.response
    assert row["backend"] and row["metadata"]["chunks"] >= 1


async def test_a_stream_left_early_is_stored_as_cancelled_with_its_partial_text(
    stored: tuple[OllamaManager, OutputManager], emulator_url: str
) -> None:
    manager, outputs = stored
    async with httpx.AsyncClient() as client:
        faults = await client.post(f"{emulator_url}/_emulator/faults", json={"token_delay_ms": 30})
        faults.raise_for_status()
    stream = ModelRunner(manager).async_generate_stream("llama3.1:8b", "Write a long essay.")
    async with contextlib.aclosing(stream):  # type: ignore[type-var]
        first = await anext(aiter(stream))
    assert not first.done
    await manager.aclose()
    await outputs.aclose()
    [row] = outputs.list_saved_outputs(output_type="results")
    assert row["status"] == "cancelled" and not row["success"] and row["kind"] == "stream"
    assert row["metadata"]["partial_response"].startswith(first.content)
