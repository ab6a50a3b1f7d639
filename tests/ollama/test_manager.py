"""OllamaManager in HTTP mode against the emulator: models, runs and their failures."""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import threading
from typing import Any

import httpx
import pytest

from app.ollama import BackendUnavailable, ModelExecutionResult, OllamaManager
from tests.ollama.conftest import SetFaults, quick_settings

MODEL = "llama3.1:8b"


# -- models -----------------------------------------------------------------------------


def test_list_models_fills_models_from_tags(manager: OllamaManager, emulator_url: str) -> None:
    tags = httpx.get(f"{emulator_url}/api/tags").json()["models"]
    models = {m.name: m for m in manager.list_models()}
    assert set(models) == {t["name"] for t in tags}
    for tag in tags:
        model = models[tag["name"]]
        assert re.fullmatch(r"[0-9a-f]{12}", model.id)
        assert tag["digest"].removeprefix("sha256:").startswith(model.id)
        assert model.size == tag["size"]
        assert model.modified == tag["modified_at"]
        assert model.parameters == tag["details"]["parameter_size"]
        assert model.family == tag["details"]["family"]
        assert model.format == tag["details"]["format"]
        assert model.status == "available"


def test_list_models_is_cached_until_force_refresh(
    manager: OllamaManager, emulator_url: str
) -> None:
    before = {m.name for m in manager.list_models()}
    httpx.request(
        "DELETE", f"{emulator_url}/api/delete", json={"model": "qwen2.5:0.5b"}
    ).raise_for_status()
    assert {m.name for m in manager.list_models()} == before
    assert {m.name for m in manager.list_models(force_refresh=True)} == before - {"qwen2.5:0.5b"}


def test_model_lookup_uses_normalised_names(manager: OllamaManager) -> None:
    assert manager.is_model_available("nomic-embed-text")
    assert manager.is_model_available("library/nomic-embed-text:latest")
    model = manager.get_model_by_name("LLAMA3.1:8b")
    assert model is not None and model.name == MODEL
    assert manager.get_model_by_name("llama3.1") is None
    assert not manager.is_model_available("nonexistent-model")


def test_model_stats_add_up(manager: OllamaManager) -> None:
    models = manager.list_models()
    stats = manager.get_model_stats()
    assert stats["total_models"] == len(models) == 3
    assert stats["total_size"] == sum(m.size for m in models)
    assert {m["name"] for m in stats["models"]} == {m.name for m in models}
    assert sum(stats["families"].values()) == 3


def test_listing_an_unreachable_backend_raises(down_url: str) -> None:
    with (
        OllamaManager(
            base_url=down_url, auto_start_server=False, settings=quick_settings(down_url)
        ) as mgr,
        pytest.raises(BackendUnavailable),
    ):
        mgr.list_models()


def test_download_model_reports_progress_and_installs(manager: OllamaManager) -> None:
    progress: list[dict[str, Any]] = []
    assert not manager.is_model_available("phi3:mini")
    assert manager.download_model("phi3:mini", progress_callback=progress.append) is True
    statuses = [p["status"] for p in progress]
    assert statuses[0] == "pulling manifest"
    assert statuses[-1] == "success"
    assert any(p.get("total") for p in progress)
    assert manager.is_model_available("phi3:mini")  # the cache was dropped by the pull


def test_download_model_of_an_unknown_name_is_false(manager: OllamaManager) -> None:
    # The emulator's registry refuses names it does not know, as ollama.com does.
    assert manager.download_model("no-such-model-anywhere:1b") is False


def test_download_model_with_backend_down_is_false(down_url: str) -> None:
    with OllamaManager(
        base_url=down_url, auto_start_server=False, settings=quick_settings(down_url)
    ) as mgr:
        assert mgr.download_model(MODEL) is False


def test_delete_model(manager: OllamaManager) -> None:
    assert manager.delete_model("qwen2.5:0.5b") is True
    assert not manager.is_model_available("qwen2.5:0.5b")
    assert manager.delete_model("qwen2.5:0.5b") is False


# -- runs -------------------------------------------------------------------------------


def test_run_model_returns_the_reply_and_ollama_counters(manager: OllamaManager) -> None:
    result = manager.run_model(MODEL, "Explain recursion", save_output=False)
    assert result.success, result.error_message
    assert result.response
    assert result.model_name == MODEL and result.prompt == "Explain recursion"
    meta = result.metadata or {}
    assert result.tokens_used == meta["eval_count"] > 0
    for key in ("prompt_eval_count", "total_duration", "eval_duration", "done_reason"):
        assert key in meta
    assert meta["backend"] == manager.base_url
    assert meta["tokens_per_second"] == pytest.approx(
        meta["eval_count"] / meta["eval_duration"] * 1e9
    )
    assert 0 < meta["time_to_first_token"] <= result.execution_time


def test_max_tokens_in_options_limits_the_reply(manager: OllamaManager) -> None:
    result = manager.run_model(
        MODEL, "Write a long essay", {"max_tokens": 3, "temperature": 0}, save_output=False
    )
    assert result.success, result.error_message
    assert result.tokens_used is not None and result.tokens_used <= 3
    assert (result.metadata or {})["done_reason"] == "length"


def test_run_model_rejects_bad_arguments(manager: OllamaManager) -> None:
    with pytest.raises(ValueError, match="temperature"):
        manager.run_model(MODEL, "hi", {"temperature": "hot"}, save_output=False)
    with pytest.raises(ValueError, match="unknown option"):
        manager.run_model(MODEL, "hi", {"temprature": 0.1}, save_output=False)
    with pytest.raises(ValueError, match="model_name"):
        manager.run_model("", "hi", save_output=False)
    with pytest.raises(ValueError, match="prompt"):
        manager.run_model(MODEL, "", save_output=False)


def test_run_model_of_an_unknown_model_fails_with_the_backend_text(
    manager: OllamaManager,
) -> None:
    result = manager.run_model("nonexistent-model", "hi", save_output=False)
    assert not result.success
    assert "not found" in (result.error_message or "")
    assert (result.metadata or {})["error_status"] == 404


def test_run_model_with_backend_down_fails(down_url: str) -> None:
    with OllamaManager(
        base_url=down_url, auto_start_server=False, settings=quick_settings(down_url)
    ) as mgr:
        result = mgr.run_model(MODEL, "hi", save_output=False)
    assert not result.success
    assert (result.metadata or {})["error_type"] == "BackendUnavailable"
    # the gateway's words, not the library's; the backend's address is for the log only
    assert result.error_message == "could not connect to the backend"


def test_run_model_times_out(manager: OllamaManager, faults: SetFaults) -> None:
    faults(stall_ms=10_000)
    result = manager.run_model(MODEL, "hi", {"timeout": 0.5}, save_output=False)
    assert not result.success
    assert "timed out" in (result.error_message or "")
    assert result.execution_time < 5


def test_run_model_reports_a_backend_500(manager: OllamaManager, faults: SetFaults) -> None:
    faults(fail_next=1, fail_status=500, fail_message="runner crashed")
    result = manager.run_model(MODEL, "hi", save_output=False)
    assert not result.success
    assert result.error_message == "runner crashed"
    assert (result.metadata or {})["error_status"] == 500


def test_a_run_nobody_streams_asks_for_one_reply_and_a_cut_one_fails_cleanly(
    manager: OllamaManager, faults: SetFaults
) -> None:
    """Without a chunk callback the backend is asked with `stream: false` (one JSON
    reply, one chunk); a reply cut part-way (the emulator's cut fault on a non-streamed
    reply) fails the run in the gateway's words, with one backend to try. A streamed run
    cut midway keeps its partial text: see test_runner's
    `test_run_streaming_cut_midway_keeps_what_arrived`."""
    whole = manager.run_model(MODEL, "Tell a story", {"seed": 1}, save_output=False)
    assert whole.success and whole.response
    assert (whole.metadata or {})["chunks"] == 1
    ttft = (whole.metadata or {})["time_to_first_token"]
    assert 0 < ttft <= whole.execution_time
    faults(cut_after_chunks=3)
    cut = manager.run_model(MODEL, "Tell a story", {"seed": 1}, save_output=False)
    assert not cut.success and cut.response == ""
    assert "the backend closed the connection mid-reply" in (cut.error_message or "")


def test_run_model_async_returns_a_future(manager: OllamaManager) -> None:
    future = manager.run_model_async(MODEL, "hi")
    assert isinstance(future, concurrent.futures.Future)
    result = future.result(timeout=30)
    assert isinstance(result, ModelExecutionResult) and result.success


def test_run_model_async_raises_bad_arguments_at_once(manager: OllamaManager) -> None:
    with pytest.raises(ValueError):
        manager.run_model_async(MODEL, "hi", {"top_k": "many"})


async def test_sync_methods_work_inside_a_running_event_loop(manager: OllamaManager) -> None:
    # As in a notebook: a blocking call made from a coroutine must not deadlock.
    result = manager.run_model(MODEL, "hi", save_output=False)
    assert result.success
    assert manager.list_models()


async def test_async_and_sync_doors_work_together(manager: OllamaManager) -> None:
    sync_results: list[ModelExecutionResult] = []
    thread = threading.Thread(
        target=lambda: sync_results.append(manager.run_model(MODEL, "a", save_output=False))
    )
    thread.start()
    results = await asyncio.gather(
        *(manager.arun_model(MODEL, f"p{i}", save_output=False) for i in range(3))
    )
    await asyncio.to_thread(thread.join)
    assert all(r.success for r in [*results, *sync_results])
    assert len(await manager.alist_models(force_refresh=True)) == 3
    assert await manager.ais_model_available(MODEL)
    assert (await manager.aget_model_stats())["total_models"] == 3
    await manager.aclose()


def test_cleanup_is_idempotent_and_the_manager_is_usable_after(manager: OllamaManager) -> None:
    assert manager.run_model(MODEL, "a", save_output=False).success
    manager.cleanup()
    manager.cleanup()
    assert manager.run_model(MODEL, "b", save_output=False).success


def test_several_backends_route_to_the_one_with_the_model(emulator_url: str, down_url: str) -> None:
    from tests.support.servers import running_emulator

    with (
        running_emulator(models=["phi3:mini"]) as other,
        OllamaManager(
            backends=[down_url, emulator_url, other], settings=quick_settings(emulator_url)
        ) as mgr,
    ):
        result = mgr.run_model("phi3:mini", "hi", save_output=False)
        assert result.success, result.error_message
        assert (result.metadata or {})["backend"] == other
        names = {m.name for m in mgr.list_models()}
        assert {"phi3:mini", MODEL} <= names
