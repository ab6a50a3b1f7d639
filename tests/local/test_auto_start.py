"""`auto_start_server`: start `ollama serve` for a silent local base_url, stop only our own."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from app.ollama import OllamaManager
from tests.ollama.conftest import quick_settings

OLLAMA = str(Path(sys.executable).parent / "ollama-emulator")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_starts_the_server_when_base_url_is_silent_and_stops_it_on_cleanup(
    down_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_EMULATOR_MODELS", "llama3.1:8b")
    mgr = OllamaManager(ollama_binary=OLLAMA, base_url=down_url, settings=quick_settings(down_url))
    assert not _answers(down_url)
    result = mgr.run_model("llama3.1:8b", "hi", save_output=False)
    assert result.success, result.error_message
    assert mgr.started_server and _answers(down_url)
    mgr.cleanup()
    assert not mgr.started_server
    assert not _answers(down_url)


def test_does_not_start_or_stop_a_server_that_already_runs(emulator_url: str) -> None:
    mgr = OllamaManager(
        ollama_binary=OLLAMA, base_url=emulator_url, settings=quick_settings(emulator_url)
    )
    assert mgr.list_models()
    assert not mgr.started_server
    mgr.cleanup()
    assert _answers(emulator_url)


def test_without_auto_start_a_silent_server_stays_silent(down_url: str) -> None:
    with OllamaManager(
        ollama_binary=OLLAMA,
        auto_start_server=False,
        base_url=down_url,
        settings=quick_settings(down_url),
    ) as mgr:
        result = mgr.run_model("llama3.1:8b", "hi", save_output=False)
        assert not result.success and not mgr.started_server


def test_a_missing_binary_leaves_a_failed_result_not_an_exception(down_url: str) -> None:
    with OllamaManager(
        ollama_binary="/nonexistent/ollama", base_url=down_url, settings=quick_settings(down_url)
    ) as mgr:
        result = mgr.run_model("llama3.1:8b", "hi", save_output=False)
        assert not result.success and not mgr.started_server


def test_a_remote_base_url_is_never_started(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "http://192.0.2.1:11434"  # TEST-NET-1: never routed
    settings = quick_settings(url)
    settings.connect_timeout = 0.3
    settings.health_timeout = 0.3
    with OllamaManager(ollama_binary=OLLAMA, base_url=url, settings=settings) as mgr:
        result = mgr.run_model("llama3.1:8b", "hi", {"timeout": 1}, save_output=False)
        assert not result.success and not mgr.started_server
