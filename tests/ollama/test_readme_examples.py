"""The README's usage examples (the seed's "Integration Patterns"), run against an emulator.

Each test body is the README snippet with one change: `OllamaManager()` is given the
emulator's `base_url` instead of the default `http://localhost:11434`. Results are stored
in a temporary SQLite database through GATEWAY_DATABASE_URL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import running_emulator


@pytest.fixture(scope="module")
def readme_emulator() -> Iterator[str]:
    with running_emulator(models=["llama3.1:latest", "codellama:latest", "qwen2.5:0.5b"]) as url:
        yield url


@pytest.fixture(autouse=True)
def temp_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/readme.db")


def test_basic_model_execution(readme_emulator: str, capsys: pytest.CaptureFixture[str]) -> None:
    from app.ollama import OllamaManager

    # Initialize manager
    manager = OllamaManager(base_url=readme_emulator)

    # Execute model
    result = manager.run_model(
        model_name="llama3.1:latest", prompt="Explain the concept of recursion in programming"
    )

    print(result.response)
    print(f"Execution time: {result.execution_time:.2f}s")
    manager.cleanup()

    assert result.success, result.error_message
    out = capsys.readouterr().out
    assert result.response in out and "Execution time: " in out


def test_advanced_execution_with_options(readme_emulator: str) -> None:
    from app.ollama import ExecutionOptions, ModelRunner, OllamaManager

    manager = OllamaManager(base_url=readme_emulator)
    runner = ModelRunner(manager)

    options = ExecutionOptions(
        temperature=0.8, max_tokens=1024, system_prompt="You are a helpful coding assistant."
    )

    result = runner.run_with_options(
        "codellama:latest", "Write a Python function to calculate fibonacci numbers.", options
    )
    manager.cleanup()

    assert result.success, result.error_message
    assert (result.metadata or {})["request"]["system"] == "You are a helpful coding assistant."


def test_streaming_response_processing(
    readme_emulator: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.ollama import ModelRunner, OllamaManager

    manager = OllamaManager(base_url=readme_emulator)
    runner = ModelRunner(manager)

    def on_chunk(chunk):  # type: ignore[no-untyped-def]
        print(chunk.content, end="", flush=True)

    result = runner.run_streaming(
        "llama3.1:latest", "Write a haiku about programming", chunk_callback=on_chunk
    )
    manager.cleanup()

    assert result.success, result.error_message
    assert capsys.readouterr().out == result.response


def test_batch_benchmark_and_comparison(readme_emulator: str) -> None:
    from app.ollama import ModelRunner, OllamaManager

    with OllamaManager(base_url=readme_emulator) as manager:
        runner = ModelRunner(manager)

        results = runner.run_batch(
            "llama3.1:latest", ["What is a list?", "What is a dict?", "What is a set?"]
        )
        report = runner.benchmark_model("llama3.1:latest", ["Say hi", "Count to five"])
        comparison = runner.create_model_comparison(
            ["llama3.1:latest", "qwen2.5:0.5b"], "Explain recursion in one sentence."
        )

        print(f"{report['avg_tokens_per_second']:.1f} tok/s, p95 {report['p95_latency']:.2f}s")
        print("fastest:", comparison["summary"]["fastest_model"])

    assert all(r.success for r in results)
    assert report["success_rate"] == 1.0
    assert comparison["summary"]["fastest_model"] in ("llama3.1:latest", "qwen2.5:0.5b")


async def test_async_use_from_an_event_loop(readme_emulator: str) -> None:
    from app.ollama import ModelRunner, OllamaManager

    async with OllamaManager(base_url=readme_emulator) as manager:
        runner = ModelRunner(manager)
        models = await manager.alist_models()
        text = ""
        async for chunk in runner.async_generate_stream("llama3.1:latest", "Write a haiku"):
            text += chunk.content
        result = await runner.async_run_model("llama3.1:latest", "Hello", timeout=30)

    assert {m.name for m in models} >= {"llama3.1:latest"}
    assert text and result.success
