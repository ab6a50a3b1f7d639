"""ModelRunner against the emulator: options, streaming, batches, chats, context,
benchmarks, comparisons and the async methods."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator

import pytest

from app.ollama import ExecutionOptions, ModelRunner, OllamaManager, StreamingChunk
from tests.ollama.conftest import SetFaults, quick_settings
from tests.support.servers import running_emulator

MODEL = "llama3.1:8b"


def test_run_with_options_applies_them(runner: ModelRunner) -> None:
    options = ExecutionOptions(temperature=0.0, max_tokens=4, system_prompt="Be brief.")
    result = runner.run_with_options(MODEL, "Write about Python", options, save_output=False)
    assert result.success, result.error_message
    meta = result.metadata or {}
    assert result.tokens_used is not None and result.tokens_used <= 4
    assert meta["request"]["system"] == "Be brief."
    assert meta["request"]["options"]["num_predict"] == 4
    assert meta["request"]["stream"] is False


def test_run_with_options_unknown_model_fails(runner: ModelRunner) -> None:
    result = runner.run_with_options("nonexistent-model", "hi", save_output=False)
    assert not result.success and "not found" in (result.error_message or "")


def test_run_streaming_delivers_chunks_that_add_up_to_the_response(runner: ModelRunner) -> None:
    chunks: list[StreamingChunk] = []
    result = runner.run_streaming(
        MODEL, "Write a haiku", chunk_callback=chunks.append, save_output=False
    )
    assert result.success, result.error_message
    assert len(chunks) >= 3
    assert "".join(c.content for c in chunks) == result.response
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert [c.done for c in chunks] == [False] * (len(chunks) - 1) + [True]
    stats = chunks[-1].stats or {}
    assert stats["success"] is True and stats["eval_count"] == result.tokens_used
    assert chunks[-1].result is result
    assert (result.metadata or {})["request"]["stream"] is True  # as the caller took it
    assert all(a.timestamp <= b.timestamp for a, b in itertools.pairwise(chunks))


def test_run_streaming_cut_midway_keeps_what_arrived(
    runner: ModelRunner, faults: SetFaults
) -> None:
    faults(cut_after_chunks=2)
    chunks: list[StreamingChunk] = []
    result = runner.run_streaming(
        MODEL, "Write a haiku", chunk_callback=chunks.append, save_output=False
    )
    assert not result.success
    partial = (result.metadata or {})["partial_response"]
    assert partial == "".join(c.content for c in chunks)
    assert chunks[-1].done and (chunks[-1].stats or {})["success"] is False


@pytest.fixture(scope="module")
def slow_emulator() -> Iterator[str]:
    """Every reply waits 300 ms before its first token, so concurrency shows in wall time."""
    with running_emulator(models=[MODEL], first_token_delay_ms=300) as url:
        yield url


def test_run_batch_limits_concurrency_and_keeps_order(slow_emulator: str) -> None:
    prompts = [f"prompt number {i}" for i in range(4)]
    with OllamaManager(base_url=slow_emulator, settings=quick_settings(slow_emulator)) as mgr:
        runner = ModelRunner(mgr)
        started = time.perf_counter()
        results = runner.run_batch(MODEL, prompts, max_concurrent=2, save_output=False)
        two_at_a_time = time.perf_counter() - started
        started = time.perf_counter()
        runner.run_batch(MODEL, prompts, max_concurrent=4, save_output=False)
        all_at_once = time.perf_counter() - started
    assert [r.prompt for r in results] == prompts
    assert all(r.success for r in results)
    assert two_at_a_time >= 0.6  # two waves of 300 ms
    assert all_at_once < two_at_a_time


def test_one_failure_in_a_batch_does_not_stop_the_others(
    runner: ModelRunner, faults: SetFaults
) -> None:
    faults(fail_next=1, fail_status=500, fail_message="boom")
    results = runner.run_batch(MODEL, ["a", "b", "c"], max_concurrent=1, save_output=False)
    assert [r.success for r in results] == [False, True, True]
    assert results[0].error_message == "boom"


def test_run_batch_rejects_bad_concurrency(runner: ModelRunner) -> None:
    with pytest.raises(ValueError, match="max_concurrent"):
        runner.run_batch(MODEL, ["a"], max_concurrent=0)


def test_run_conversation(runner: ModelRunner) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "What is 2+2?"},
    ]
    result = runner.run_conversation(MODEL, messages, save_output=False)
    assert result.success, result.error_message
    assert result.response
    assert result.prompt == "What is 2+2?"
    assert (result.metadata or {})["kind"] == "chat"


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], "empty"),
        ([{"role": "wizard", "content": "x"}], "role"),
        ([{"role": "user", "content": 3}], "content"),
        ([{"role": "user", "content": ""}], "empty"),
        ([{"role": "user", "content": "x", "mood": "happy"}], "unknown keys"),
        ("hello", "list"),
    ],
)
def test_run_conversation_validates_messages(
    runner: ModelRunner, messages: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        runner.run_conversation(MODEL, messages, save_output=False)  # type: ignore[arg-type]


def test_run_conversation_unknown_model_fails(runner: ModelRunner) -> None:
    result = runner.run_conversation(
        "nonexistent-model", [{"role": "user", "content": "hi"}], save_output=False
    )
    assert not result.success and "not found" in (result.error_message or "")


def test_run_with_context_records_the_documents_used(runner: ModelRunner) -> None:
    docs = ["The sky is green on Zork.", "Zork has two moons."]
    result = runner.run_with_context(MODEL, "What colour is the sky?", docs, save_output=False)
    assert result.success, result.error_message
    meta = result.metadata or {}
    assert meta["context_docs_used"] == [0, 1]
    assert meta["question"] == "What colour is the sky?"
    assert docs[0] in result.prompt and docs[1] in result.prompt


def test_run_with_context_trims_to_the_context_window(runner: ModelRunner) -> None:
    docs = ["short doc", "x" * 20_000, "never reached"]
    options = ExecutionOptions(context_window=2048, max_tokens=256)
    result = runner.run_with_context(MODEL, "Q?", docs, options, save_output=False)
    meta = result.metadata or {}
    assert meta["context_docs_used"] == [0, 1]
    assert meta["context_docs_truncated"] == [1]
    assert meta["context_docs_dropped"] == [2]
    assert "never reached" not in result.prompt


def test_run_with_context_rejects_non_string_documents(runner: ModelRunner) -> None:
    with pytest.raises(ValueError, match=r"context_docs\[1\]"):
        runner.run_with_context(MODEL, "Q", ["a", 2], save_output=False)  # type: ignore[list-item]


def test_benchmark_model_summarises_speed_and_failures(
    runner: ModelRunner, faults: SetFaults
) -> None:
    faults(fail_next=1, fail_status=500, fail_message="boom")
    report = runner.benchmark_model(MODEL, ["a", "b", "c", "d"], save_output=False)
    assert report["total_prompts"] == 4
    assert report["failed_runs"] == 1 and report["success_rate"] == 0.75
    ok = [r for r in report["individual_results"] if r["success"]]
    times = [r["execution_time"] for r in ok]
    assert report["avg_execution_time"] == pytest.approx(sum(times) / 3)
    assert min(times) <= report["p50_latency"] <= report["p95_latency"] <= max(times)
    speeds = [r["metadata"]["tokens_per_second"] for r in ok]
    assert report["avg_tokens_per_second"] == pytest.approx(sum(speeds) / 3)
    assert report["throughput_tokens_per_second"] > 0
    assert report["avg_time_to_first_token"] > 0
    assert report["errors"] == ["boom"]


def test_benchmark_of_an_unknown_model_has_no_averages(runner: ModelRunner) -> None:
    report = runner.benchmark_model("nonexistent-model", ["a"], save_output=False)
    assert report["success_rate"] == 0.0
    assert report["avg_execution_time"] is None and report["avg_tokens_per_second"] is None


def test_create_model_comparison(runner: ModelRunner) -> None:
    models = [MODEL, "qwen2.5:0.5b", "nonexistent-model"]
    comparison = runner.create_model_comparison(models, "Say hi", save_output=False)
    assert set(comparison) == {"results", "summary"}
    assert list(comparison["results"]) == models
    summary = comparison["summary"]
    assert summary["fastest_model"] in (MODEL, "qwen2.5:0.5b")
    assert summary["highest_tokens_per_second"]["model"] in (MODEL, "qwen2.5:0.5b")
    assert set(summary["failures"]) == {"nonexistent-model"}
    assert summary["response_lengths"][MODEL] == len(comparison["results"][MODEL]["response"])


def test_create_model_comparison_rejects_repeated_models(runner: ModelRunner) -> None:
    with pytest.raises(ValueError, match="repeat"):
        runner.create_model_comparison([MODEL, MODEL], "x")


# -- async methods ----------------------------------------------------------------------


async def test_async_generate_and_chat(runner: ModelRunner) -> None:
    generated = await runner.async_generate(MODEL, "hi", save_output=False)
    chatted = await runner.async_chat(MODEL, [{"role": "user", "content": "hi"}], save_output=False)
    assert generated.success and chatted.success
    assert generated.response and chatted.response
    await runner.manager.aclose()


async def test_async_generate_stream_yields_the_callback_chunks(runner: ModelRunner) -> None:
    streamed = [
        chunk
        async for chunk in runner.async_generate_stream(MODEL, "Write a haiku", save_output=False)
    ]
    called: list[StreamingChunk] = []
    result = await runner.arun_streaming(
        MODEL, "Write a haiku", chunk_callback=called.append, save_output=False
    )
    assert [c.content for c in streamed] == [c.content for c in called]
    assert "".join(c.content for c in streamed) == result.response
    assert streamed[-1].done and (streamed[-1].stats or {})["success"] is True
    await runner.manager.aclose()


async def test_async_generate_stream_reports_a_failure_in_its_last_chunk(
    runner: ModelRunner,
) -> None:
    chunks = [
        c async for c in runner.async_generate_stream("nonexistent-model", "hi", save_output=False)
    ]
    assert len(chunks) == 1 and chunks[0].done
    assert "not found" in (chunks[0].stats or {})["error_message"]
    await runner.manager.aclose()


async def test_leaving_async_generate_stream_early_cancels_the_run(
    runner: ModelRunner, faults: SetFaults
) -> None:
    faults(token_delay_ms=50)
    started = time.perf_counter()
    async for chunk in runner.async_generate_stream(MODEL, "Write a long essay", save_output=False):
        assert not chunk.done
        break
    assert time.perf_counter() - started < 2
    await runner.manager.aclose()


async def test_async_run_batch(runner: ModelRunner) -> None:
    results = await runner.async_run_batch(MODEL, ["a", "b", "c"], save_output=False)
    assert [r.prompt for r in results] == ["a", "b", "c"] and all(r.success for r in results)
    await runner.manager.aclose()


async def test_async_run_model_timeout_cancels_and_fails(
    runner: ModelRunner, faults: SetFaults
) -> None:
    faults(stall_ms=10_000)
    started = time.perf_counter()
    result = await runner.async_run_model(MODEL, "hi", timeout=1, save_output=False)
    assert time.perf_counter() - started < 5
    assert not result.success and "timed out after 1s" in (result.error_message or "")
    ok = await runner.async_run_model(MODEL, "hi", timeout=30, save_output=False)
    assert ok.success
    await runner.manager.aclose()


async def test_async_benchmark_comparison_and_context(runner: ModelRunner) -> None:
    report = await runner.abenchmark_model(MODEL, ["a"], save_output=False)
    comparison = await runner.acreate_model_comparison([MODEL], "a", save_output=False)
    context = await runner.arun_with_context(MODEL, "q", ["doc"], save_output=False)
    chunks = [
        c
        async for c in runner.async_chat_stream(
            MODEL, [{"role": "user", "content": "hi"}], save_output=False
        )
    ]
    assert report["success_rate"] == 1.0
    assert comparison["summary"]["successful_models"] == [MODEL]
    assert context.success
    assert chunks[-1].done and (chunks[-1].stats or {})["success"]
    await runner.manager.aclose()


def test_runs_from_many_threads_at_once(runner: ModelRunner) -> None:
    async def many() -> list[bool]:
        results = await asyncio.gather(
            *(
                asyncio.to_thread(runner.run_with_options, MODEL, f"p{i}", None, False)
                for i in range(6)
            )
        )
        return [r.success for r in results]

    assert all(asyncio.run(many()))
