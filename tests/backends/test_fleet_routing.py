"""Routing by expected wait, and per-model limits, over emulator processes on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from app.ollama import ModelRunner, OllamaManager
from app.settings import Settings
from tests.support.recording_proxy import RecordingProxy
from tests.support.servers import running_emulator, serving_in_thread

MODEL = "llama3.1:8b"
OTHER = "qwen2.5:0.5b"


def manager_for(backends: list[str]) -> OllamaManager:
    settings = Settings(
        backends=backends,
        request_timeout=30,
        connect_timeout=2,
        backend_registry=False,
        _env_file=None,
    )
    return OllamaManager(auto_start_server=False, backends=backends, settings=settings)


@contextlib.contextmanager
def emulators(count: int, *, models: tuple[str, ...] = (MODEL,)) -> Iterator[list[str]]:
    """`count` emulator processes answering 10 tokens, 10 ms apart (about 0.1 s a run)."""
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(
                running_emulator(
                    models=models, token_delay_ms=10, extra_args=["--reply-tokens", "10"]
                )
            )
            for _ in range(count)
        ]


def warm(url: str, model: str = MODEL) -> None:
    """Load `model` on the emulator at `url` (it then shows in `/api/ps`)."""
    body = {"model": model, "prompt": "warm up", "stream": False}
    httpx.post(f"{url}/api/generate", json=body, timeout=10).raise_for_status()


@pytest.mark.timeout(60)
async def test_thirty_requests_spread_over_three_single_slot_backends() -> None:
    """Three backends with `;max=1`, the model loaded on each, 30 requests at once: the
    waiting requests spread over all three (each serves at least 8), where ranking by
    load alone piled every waiting request onto the first backend of the list."""
    with emulators(3) as urls:
        for url in urls:
            warm(url)
        manager = manager_for([f"b{i}={url};max=1" for i, url in enumerate(urls)])
        try:
            runner = ModelRunner(manager)
            results = await asyncio.gather(
                *(runner.async_generate(MODEL, f"q{i}", save_output=False) for i in range(30))
            )
        finally:
            await manager.aclose()
    assert all(r.success for r in results), [r.error_message for r in results if not r.success]
    counts = Counter((r.metadata or {})["backend"] for r in results)
    print("served per backend:", [counts[url] for url in urls])  # for the record (-s)
    assert sorted(counts) == sorted(urls)
    assert min(counts.values()) >= 8, counts


@pytest.mark.timeout(60)
async def test_a_long_queue_on_a_warm_backend_loses_to_a_cold_load_elsewhere() -> None:
    """Two `;max=1` backends, the model loaded on the first only: 12 requests at once do
    not all queue on the warm one (a cold load counts 5 s until one is seen, a run 1 s),
    and the cold backend's load time is then shown."""
    with emulators(2) as (warm_url, cold_url):
        warm(warm_url)
        manager = manager_for([f"warm={warm_url};max=1", f"cold={cold_url};max=1"])
        try:
            runner = ModelRunner(manager)
            results = await asyncio.gather(
                *(runner.async_generate(MODEL, f"q{i}", save_output=False) for i in range(12))
            )
            [_, cold] = manager.pool.describe()
        finally:
            await manager.aclose()
    assert all(r.success for r in results)
    counts = Counter((r.metadata or {})["backend"] for r in results)
    print("warm, cold:", counts[warm_url], counts[cold_url])  # for the record (-s)
    assert counts[warm_url] >= 5 and counts[cold_url] >= 2, counts
    # The emulator reports a 30 ms load for a run that found the model not loaded.
    assert cold["load_ms"] == {MODEL: 30.0}
    assert MODEL in cold["loaded"] and cold["run_ms"][MODEL] > 0


@pytest.mark.timeout(60)
async def test_max_per_model_holds_one_model_while_others_use_free_slots() -> None:
    """`;max=4;max_per_model=2`: six runs of one model and two of another at once; the
    backend never has more than two of the first in flight, while the other model's runs
    go alongside them, not after them."""
    with emulators(1, models=(MODEL, OTHER)) as [url]:
        proxy = RecordingProxy(url)
        with serving_in_thread(proxy) as proxied:
            manager = manager_for([f"solo={proxied};max=4;max_per_model=2"])
            runner = ModelRunner(manager)
            try:
                many = [runner.async_generate(MODEL, f"m{i}", save_output=False) for i in range(6)]
                others = [
                    runner.async_generate(OTHER, f"o{i}", save_output=False) for i in range(2)
                ]
                results = await asyncio.gather(*many, *others)
                [state] = manager.pool.describe()
            finally:
                await manager.aclose()
    assert all(r.success for r in results)
    assert proxy.most_in_flight[MODEL] == 2
    assert proxy.most_in_flight[OTHER] == 2
    order = proxy.prompts()
    # Both runs of the other model started before the fourth run of the first.
    assert max(order.index("o0"), order.index("o1")) < 4, order
    assert state["max_per_model"] == 2 and state["in_flight"] == {}
