"""CLI mode (`use_http_api=False`): list, pull and run through the `ollama` binary.

The binary is the emulator's stand-in, `ollama-emulator`, pointed at the shared emulator
through OLLAMA_HOST (the manager sets it from base_url).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.ollama import ModelRunner, OllamaManager, StreamingChunk
from tests.ollama.conftest import quick_settings

OLLAMA = str(Path(sys.executable).parent / "ollama-emulator")
MODEL = "llama3.1:8b"


@pytest.fixture
def cli_manager(emulator_url: str) -> Iterator[OllamaManager]:
    mgr = OllamaManager(
        ollama_binary=OLLAMA,
        auto_start_server=False,
        base_url=emulator_url,
        use_http_api=False,
        settings=quick_settings(emulator_url),
    )
    yield mgr
    mgr.cleanup()


def test_list_models_parses_ollama_list(cli_manager: OllamaManager, manager: OllamaManager) -> None:
    via_cli = {m.name: m for m in cli_manager.list_models()}
    via_http = {m.name: m for m in manager.list_models()}
    assert set(via_cli) == set(via_http)
    for name, model in via_cli.items():
        assert model.id == via_http[name].id
        # `ollama list` prints sizes rounded to 2-3 significant digits.
        assert model.size == pytest.approx(via_http[name].size, rel=0.06)
        assert model.modified


def test_download_model_runs_ollama_pull(cli_manager: OllamaManager) -> None:
    progress: list[dict[str, Any]] = []
    assert cli_manager.download_model("phi3:mini", progress_callback=progress.append) is True
    assert progress and progress[-1]["status"] == "success"
    assert cli_manager.is_model_available("phi3:mini")


def test_download_of_an_unknown_model_is_false(cli_manager: OllamaManager) -> None:
    assert cli_manager.download_model("no-such-model-anywhere:1b") is False


def test_run_model_runs_ollama_run(cli_manager: OllamaManager, manager: OllamaManager) -> None:
    via_cli = cli_manager.run_model(MODEL, "Explain recursion", save_output=False)
    via_http = manager.run_model(MODEL, "Explain recursion", save_output=False)
    assert via_cli.success, via_cli.error_message
    assert (via_cli.metadata or {})["mode"] == "cli"
    # The emulator's text is deterministic, so both doors must agree exactly.
    assert via_cli.response == via_http.response


def test_run_streaming_in_cli_mode_streams_stdout(cli_manager: OllamaManager) -> None:
    chunks: list[StreamingChunk] = []
    result = ModelRunner(cli_manager).run_streaming(
        MODEL, "Write a haiku", chunk_callback=chunks.append, save_output=False
    )
    assert result.success, result.error_message
    assert "".join(c.content for c in chunks) == result.response
    assert chunks[-1].done


def test_cli_run_of_an_unknown_model_fails_with_the_cli_message(
    cli_manager: OllamaManager,
) -> None:
    result = cli_manager.run_model("no-such-model-anywhere:1b", "hi", save_output=False)
    assert not result.success
    assert result.error_message


def test_cli_mode_with_server_down_fails(down_url: str) -> None:
    with OllamaManager(
        ollama_binary=OLLAMA,
        auto_start_server=False,
        base_url=down_url,
        use_http_api=False,
        settings=quick_settings(down_url),
    ) as mgr:
        result = mgr.run_model(MODEL, "hi", save_output=False)
        assert not result.success
        assert "could not connect" in (result.error_message or "")
        assert mgr.download_model(MODEL) is False


def test_missing_binary_fails_the_run(emulator_url: str) -> None:
    with OllamaManager(
        ollama_binary="/nonexistent/ollama",
        auto_start_server=False,
        base_url=emulator_url,
        use_http_api=False,
        settings=quick_settings(emulator_url),
    ) as mgr:
        result = mgr.run_model(MODEL, "hi", save_output=False)
    assert not result.success and "/nonexistent/ollama" in (result.error_message or "")


def test_cli_mode_chat_goes_over_http(cli_manager: OllamaManager) -> None:
    result = ModelRunner(cli_manager).run_conversation(
        MODEL, [{"role": "user", "content": "hi"}], save_output=False
    )
    assert result.success and (result.metadata or {})["mode"] == "http"
