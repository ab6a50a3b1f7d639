"""Warm models (GATEWAY_KEEP_WARM): loaded on N backends within one health round after the
gateway starts and again after an eviction, only where placement allows and the model is
installed; shown per backend in `/gateway/backends`. Three emulators on loopback."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from app.main import create_app
from tests.api.conftest import gateway_settings
from tests.support.servers import running_emulator, serving_in_thread

MODEL = "llama3.1:8b"
OTHER = "qwen2.5:0.5b"
ROUND_S = 1.0
"""GATEWAY_HEALTH_INTERVAL in these tests."""


def loaded(url: str) -> list[str]:
    models = httpx.get(f"{url}/api/ps", timeout=5).json()["models"]
    return sorted(str(m["name"]) for m in models)


def within_a_round(check: Callable[[], bool], what: str) -> float:
    """Wait for `check`, at most one health round and a second of slack; the time taken."""
    started = time.monotonic()
    deadline = started + ROUND_S + 1.0
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within one health round: {what}")
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.timeout(60)
def test_a_model_kept_warm_is_loaded_on_n_backends_after_start_and_after_an_eviction(
    tmp_path: Path,
) -> None:
    with contextlib.ExitStack() as stack:
        b0 = stack.enter_context(running_emulator(models=(MODEL, OTHER)))
        b1 = stack.enter_context(running_emulator(models=(MODEL,)))
        b2 = stack.enter_context(running_emulator(models=(MODEL,)))
        b3 = stack.enter_context(running_emulator(models=(MODEL,)))
        emulators = [b0, b1, b2, b3]
        settings = gateway_settings(
            [f"b0={b0};tags=cpu", f"b1={b1};tags=gpu", f"b2={b2};tags=gpu", f"b3={b3};tags=gpu"],
            tmp_path,
            health_interval=ROUND_S,
            keep_warm={MODEL: 2, OTHER: 1},
            placement={"llama3.1:*": ["tag:gpu"]},
        )
        assert all(loaded(url) == [] for url in emulators)
        url = stack.enter_context(serving_in_thread(create_app(settings)))

        def warm_on() -> list[int]:
            return [i for i, e in enumerate(emulators) if MODEL in loaded(e)]

        took = within_a_round(lambda: len(warm_on()) == 2, f"{MODEL} loaded on two backends")
        print(f"warm after start in {took:.2f}s on", warm_on())  # for the record (-s)
        chosen = warm_on()
        assert 0 not in chosen, "b0 (cpu) is not allowed by the placement rule"
        assert loaded(b0) == [OTHER], f"{OTHER} is installed on b0 only"
        status = {b["name"]: b for b in httpx.get(f"{url}/gateway/backends", timeout=10).json()}
        assert status["b0"]["warm"] == [OTHER]
        assert sorted(n for n in status if MODEL in status[n]["warm"]) == [f"b{i}" for i in chosen]

        # an eviction (the model unloaded on the backend itself) is undone in one round
        evicted = emulators[chosen[0]]
        assert unloaded(evicted), "keep_alive 0 unloads the model on the backend"
        took = within_a_round(lambda: MODEL in loaded(evicted), "the evicted model reloaded")
        print(f"reloaded after eviction in {took:.2f}s")
        assert warm_on() == chosen, "loaded again where it was, on two backends"
        time.sleep(ROUND_S * 1.5)  # and it stays at two: no third backend takes it up
        assert warm_on() == chosen and loaded(b0) == [OTHER]
        # the warm loads last until evicted (keep_alive -1), not Ollama's default 5 minutes;
        # a request that shortened that (its own keep_alive) is undone in one round
        assert expires_at(evicted) > "2100"
        assert shortened(evicted), "a request's own keep_alive shortens the warm load"
        within_a_round(lambda: expires_at(evicted) > "2100", "the keep-alive renewed")


def unloaded(url: str) -> bool:
    """Unload the model on the backend itself (`keep_alive: 0`) and see it gone. The
    gateway's round may load it again between the two calls on a busy machine, so a few
    tries; False if it never showed unloaded."""
    gone = {"model": MODEL, "keep_alive": 0}
    for _ in range(5):
        httpx.post(f"{url}/api/generate", json=gone, timeout=5).raise_for_status()
        if MODEL not in loaded(url):
            return True
    return False


def shortened(url: str) -> bool:
    """Send a run with Ollama's default keep_alive straight to the backend and see its load
    expire before 2100. The gateway's round may renew it between the two calls on a busy
    machine, so a few tries; False if it never showed shortened."""
    run = {"model": MODEL, "prompt": "hi", "stream": False}
    for _ in range(5):
        httpx.post(f"{url}/api/generate", json=run, timeout=5).raise_for_status()
        if expires_at(url) < "2100":
            return True
    return False


def expires_at(url: str) -> str:
    [model] = httpx.get(f"{url}/api/ps", timeout=5).json()["models"]
    return str(model["expires_at"])
