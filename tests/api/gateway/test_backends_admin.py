"""Backends changed at run time through `/gateway/backends` (admin), and what it shows."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import ollama

from app.main import create_app
from tests.api.conftest import gateway_settings
from tests.support.servers import running_emulator, serving_in_thread


def test_a_backend_added_at_run_time_serves_its_models_and_can_be_removed(
    tmp_path: Path,
) -> None:
    with (
        running_emulator(models=("llama3.1:8b",)) as first,
        running_emulator(models=("smollm2:135m",)) as second,
    ):
        settings = gateway_settings([f"one={first}"], tmp_path)
        with serving_in_thread(create_app(settings)) as url:
            client = ollama.Client(host=url)
            assert [m.model for m in client.list().models] == ["llama3.1:8b"]

            added = httpx.post(
                f"{url}/gateway/backends", json={"backend": f"two={second};max=2;weight=2"}
            )
            assert added.status_code == 201, added.text
            shown = added.json()
            assert shown["name"] == "two" and shown["healthy"] and shown["max_concurrency"] == 2
            assert shown["models"] == ["smollm2:135m"]
            assert sorted(m.model for m in client.list().models) == [
                "llama3.1:8b",
                "smollm2:135m",
            ]
            assert client.chat(
                model="smollm2:135m", messages=[{"role": "user", "content": "hi"}]
            ).message.content

            clash = httpx.post(f"{url}/gateway/backends", json={"backend": f"three={second}"})
            assert clash.status_code == 409 and "already in the pool" in clash.json()["detail"]
            bad = httpx.post(f"{url}/gateway/backends", json={"backend": "not a url"})
            assert bad.status_code == 422 and bad.json()["errors"][0]["loc"][-1] == "backend"
            zero = httpx.post(f"{url}/gateway/backends", json={"backend": f"z={second};max=0"})
            assert zero.status_code == 422 and "bad parameter" in zero.json()["detail"]

            assert httpx.delete(f"{url}/gateway/backends/two").status_code == 204
            names = [b["name"] for b in httpx.get(f"{url}/gateway/backends").json()]
            assert names == ["one"]
            assert [m.model for m in client.list().models] == ["llama3.1:8b"]
            assert httpx.delete(f"{url}/gateway/backends/two").status_code == 404
            last = httpx.delete(f"{url}/gateway/backends/one")
            assert last.status_code == 409 and "last one" in last.json()["detail"]


def test_queue_waits_are_shown(tmp_path: Path) -> None:
    with running_emulator(models=("llama3.1:8b",), token_delay_ms=20) as emulator:
        settings = gateway_settings([f"solo={emulator};max=1"], tmp_path)
        with serving_in_thread(create_app(settings)) as url:
            body = {"model": "llama3.1:8b", "prompt": "hi", "options": {"max_tokens": 5}}

            async def burst() -> None:
                async with httpx.AsyncClient(timeout=30) as c:
                    replies = await asyncio.gather(
                        *(c.post(f"{url}/gateway/generate", json=body) for _ in range(3))
                    )
                assert all(r.status_code == 200 for r in replies)

            asyncio.run(burst())
            [state] = httpx.get(f"{url}/gateway/backends").json()
            assert state["queue_wait_ms_max"] > 0 and state["queue_wait_ms_mean"] > 0
