"""Backends of a fleet through the gateway: tags, bearer tokens read from the environment
(sent to their backend only, never shown, logged or stored), and interactive requests
served ahead of a job's runs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.main import create_app
from tests.api.conftest import gateway_settings
from tests.support.recording_proxy import RecordingProxy
from tests.support.servers import running_emulator, serving_in_thread

MODEL = "llama3.1:8b"
TOKEN = "tok-3b8f0c1e9d7a4f25b6c0e8d1a2f3b4c5"
OTHER_TOKEN = "tok-91d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6"


@pytest.mark.timeout(90)
def test_a_token_goes_to_its_backend_only_and_is_never_shown_logged_or_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("BACKEND_TOKEN_GPU", TOKEN)
    monkeypatch.setenv("BACKEND_TOKEN_SPARE", OTHER_TOKEN)
    monkeypatch.setenv("SOME_SECRET", "not-for-backends")
    caplog.set_level(logging.DEBUG)
    slow = {"token_delay_ms": 20, "extra_args": ["--reply-tokens", "10"]}
    with (
        running_emulator(models=(MODEL,), **slow) as first,  # type: ignore[arg-type]
        running_emulator(models=(MODEL,), **slow) as second,  # type: ignore[arg-type]
        running_emulator(models=(MODEL,)) as third,
    ):
        for emulator in (first, second):  # both warm: the runs spread over both
            warm = {"model": MODEL, "prompt": "warm up", "stream": False}
            httpx.post(f"{emulator}/api/generate", json=warm, timeout=10).raise_for_status()
        guarded = RecordingProxy(first, require_token=TOKEN)
        open_ = RecordingProxy(second)
        spare = RecordingProxy(third, require_token=OTHER_TOKEN)
        with (
            serving_in_thread(guarded) as guarded_url,
            serving_in_thread(open_) as open_url,
            serving_in_thread(spare) as spare_url,
        ):
            backends = [
                f"gpu={guarded_url};max=4;tags=a100,big;token_env=BACKEND_TOKEN_GPU",
                f"cpu={open_url};tags=cpu",
            ]
            settings = gateway_settings(backends, tmp_path, health_timeout=5)
            with serving_in_thread(create_app(settings)) as url:

                async def burst() -> list[httpx.Response]:
                    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                        body = {"model": MODEL, "prompt": "hello", "options": {"max_tokens": 5}}
                        return list(
                            await asyncio.gather(
                                *(client.post("/gateway/generate", json=body) for _ in range(8))
                            )
                        )

                replies = asyncio.run(burst())
                assert [r.status_code for r in replies] == [200] * 8, replies[0].text
                served = {r.json()["metadata"]["backend"] for r in replies}
                assert served == {guarded_url, open_url}
                assert httpx.get(f"{url}/api/tags").status_code == 200

                listed = httpx.get(f"{url}/gateway/backends")
                gpu, cpu = listed.json()
                assert gpu["tags"] == ["a100", "big"] and cpu["tags"] == ["cpu"]
                assert gpu["healthy"] and gpu["token_env"] == "BACKEND_TOKEN_GPU"
                assert gpu["token_set"] and not cpu["token_set"]
                assert gpu["max_concurrency"] == 4 and gpu["load_ms"] is not None

                # Through the API: only BACKEND_TOKEN_* (or a name the start-up list uses),
                # and only a variable that is set.
                for entry, why in [
                    (f"x={spare_url};token_env=SOME_SECRET", "must start with"),
                    (f"x={spare_url};token_env=BACKEND_TOKEN_UNSET", "is not set"),
                ]:
                    refused = httpx.post(f"{url}/gateway/backends", json={"backend": entry})
                    assert refused.status_code == 422 and why in refused.json()["detail"]
                added = httpx.post(
                    f"{url}/gateway/backends",
                    json={"backend": f"spare={spare_url};token_env=BACKEND_TOKEN_SPARE"},
                )
                assert added.status_code == 201, added.text
                assert added.json()["healthy"], "the spare's proxy let the gateway in"
                shown = [listed.text, added.text, httpx.get(f"{url}/gateway/backends").text]
    assert guarded.arrivals and all(a.authorization == f"Bearer {TOKEN}" for a in guarded.arrivals)
    assert open_.arrivals and all(a.authorization is None for a in open_.arrivals)
    assert spare.arrivals and all(
        a.authorization == f"Bearer {OTHER_TOKEN}" for a in spare.arrivals
    )
    for secret in (TOKEN, OTHER_TOKEN, "not-for-backends"):
        assert all(secret not in text for text in shown)
        assert secret not in caplog.text
        assert secret.encode() not in (tmp_path / "gateway.db").read_bytes()
    assert "token_env=BACKEND_TOKEN_SPARE" in (tmp_path / "gateway.db").read_bytes().decode(
        errors="replace"
    )


@pytest.mark.timeout(90)
def test_an_interactive_request_is_served_ahead_of_a_jobs_waiting_runs(tmp_path: Path) -> None:
    """A `;max=2` backend whose slots hold two runs of a background batch, six more of its
    runs waiting: an interactive `/gateway/generate` is the next to reach the backend."""
    with running_emulator(
        models=(MODEL,), token_delay_ms=100, extra_args=["--reply-tokens", "10"]
    ) as emulator:
        proxy = RecordingProxy(emulator)
        with serving_in_thread(proxy) as proxied:
            settings = gateway_settings([f"solo={proxied};max=2"], tmp_path)
            with serving_in_thread(create_app(settings)) as url:
                prompts = [f"batch {i}" for i in range(8)]
                asyncio.run(interactive_during_a_batch(url, prompts))
    order = proxy.prompts()
    assert sorted(order) == sorted([*prompts, "interactive"])
    assert order.index("interactive") == 2, order


async def interactive_during_a_batch(url: str, prompts: list[str]) -> None:
    """Start a background batch, wait until it fills the backend's two slots with six runs
    waiting, send an interactive run, see it queue, wait for both to finish."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def state_when(done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
            deadline = time.monotonic() + 20
            while True:
                [state] = (await client.get("/gateway/backends")).json()
                if done(state):
                    return state
                assert time.monotonic() < deadline, state
                await asyncio.sleep(0.01)

        body = {"model": MODEL, "prompts": prompts, "max_concurrent": 8, "background": True}
        job = await client.post("/gateway/batches", json=body)
        assert job.status_code == 202, job.text
        state = await state_when(lambda s: s["outstanding_batch"] == 2 and s["queued_batch"] == 6)
        assert state["in_flight"] == {MODEL: 2} and state["queued_by_model"] == {MODEL: 6}
        interactive = asyncio.create_task(
            client.post("/gateway/generate", json={"model": MODEL, "prompt": "interactive"})
        )
        state = await state_when(lambda s: s["queued"] - s["queued_batch"] == 1)
        assert state["outstanding_batch"] == 2, "it waits behind a full backend"
        reply = await interactive
        assert reply.status_code == 200, reply.text
        deadline = time.monotonic() + 20
        while (await client.get(job.headers["Location"])).json()["status"] != "succeeded":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
