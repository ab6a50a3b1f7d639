"""Redis restarted under load with shared rate limits: no 5xx (a limiter outage lets
requests through, with a warning), and limits apply again once it is back."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from app.access import KeyStore
from app.main import create_app
from tests.api.conftest import gateway_settings
from tests.support.servers import free_port, serving_in_thread

MODEL = "llama3.1:8b"


def start_redis(port: int, tmp_path: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        probe = subprocess.run(
            ["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True, check=False
        )
        if probe.stdout.strip() == "PONG":
            return proc
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def test_a_redis_restart_under_load_answers_no_5xx(emulator_url: str, tmp_path: Path) -> None:
    port = free_port()
    redis = start_redis(port, tmp_path)
    settings = gateway_settings(
        [emulator_url], tmp_path, redis_url=f"redis://127.0.0.1:{port}/0", key_cache_seconds=0
    )

    async def make_key() -> str:
        store = KeyStore(settings.database_url)
        try:
            return (await store.acreate("loaded", "user", requests_per_minute=100_000)).key
        finally:
            await store.aclose()

    from app.storage.migrations import upgrade

    upgrade(settings.database_url)
    key = asyncio.run(make_key())
    statuses: list[int] = []
    try:
        with serving_in_thread(create_app(settings)) as url:

            async def load(seconds: float) -> None:
                headers = {"Authorization": f"Bearer {key}"}
                body = {"model": MODEL, "prompt": "hi", "options": {"max_tokens": 4}}
                async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as c:
                    end = time.monotonic() + seconds
                    while time.monotonic() < end:
                        replies = await asyncio.gather(
                            *(c.post("/gateway/generate", json=body) for _ in range(4))
                        )
                        statuses.extend(r.status_code for r in replies)

            async def scenario() -> None:
                running = asyncio.create_task(load(6))
                await asyncio.sleep(1.5)
                redis.terminate()  # Redis goes away under load ...
                await asyncio.to_thread(redis.wait, 10)
                await asyncio.sleep(1.5)
                restarted.append(await asyncio.to_thread(start_redis, port, tmp_path))
                await running  # ... and comes back

            restarted: list[subprocess.Popen[bytes]] = []
            asyncio.run(scenario())
    finally:
        redis.kill()
        for proc in restarted:
            proc.kill()
    assert statuses and all(s < 500 for s in statuses), sorted(set(statuses))
    assert statuses.count(200) == len(statuses)
