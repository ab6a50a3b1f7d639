"""Faults lose nothing: a backend SIGKILLed while it is answering costs a pause, not an
answer, for every run whose caller has received nothing yet."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from app.main import create_app
from tests.api.conftest import gateway_settings
from tests.support.servers import free_port, running_process, serving_in_thread

MODEL = "llama3.1:8b"


@contextlib.contextmanager
def emulator(token_delay_ms: float) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """An emulator process (its URL and process, to kill)."""
    port = free_port()
    args = [sys.executable, "-m", "app.cli", "emulator", "--host", "127.0.0.1", "--port",
            str(port), "--models", MODEL, "--token-delay-ms", str(token_delay_ms)]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with running_process(args, url + "/") as proc:
        yield url, proc


def test_60_plain_runs_survive_a_backend_killed_while_they_generate(tmp_path: Path) -> None:
    """60 concurrent non-streamed `/gateway/generate` runs over two backends, one SIGKILLed
    while they are generating: all 60 succeed; those that were on it say where they
    failed over from."""
    with emulator(20) as (first, victim), emulator(20) as (second, _):
        settings = gateway_settings([first, second], tmp_path, request_timeout=60)
        with serving_in_thread(create_app(settings)) as url:
            started = time.monotonic()
            replies = generate_while_one_dies(url, victim, 60)
            took = time.monotonic() - started
    statuses = [r.status_code for r in replies]
    assert statuses == [200] * 60, [r.text[:200] for r in replies if r.status_code != 200][:3]
    moved = [r.json() for r in replies if r.json()["metadata"].get("failed_over_from")]
    assert moved, "no run was on the killed backend"
    assert all(r["metadata"]["backend"] == second for r in moved)
    assert all(r["response"] and r["success"] for r in moved)
    print(f"60 of 60 answered in {took:.1f} s; {len(moved)} failed over")  # for the record (-s)


def generate_while_one_dies(
    url: str, victim: subprocess.Popen[bytes], count: int
) -> list[httpx.Response]:
    """`count` concurrent non-streamed `/gateway/generate` runs; `victim` is SIGKILLed 0.4 s
    in, while they are generating (at 20 ms a token)."""

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            body = {"model": MODEL, "prompt": "tell me a long story"}
            runs = [
                asyncio.create_task(client.post(f"{url}/gateway/generate", json=body))
                for _ in range(count)
            ]
            await asyncio.sleep(0.4)
            victim.send_signal(signal.SIGKILL)
            return list(await asyncio.gather(*runs))

    return asyncio.run(scenario())


SURFACES = [
    ("/api/generate", {"model": MODEL, "prompt": "a long story", "stream": False}, "response"),
    (
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": "a long story"}]},
        "choices",
    ),
]


def test_plain_runs_on_the_drop_in_surfaces_survive_a_killed_backend(tmp_path: Path) -> None:
    """The same on Ollama's `/api` (`stream: false`) and OpenAI's `/v1`: 20 runs each, one
    backend SIGKILLed while they generate, all answered."""
    with emulator(20) as (first, victim), emulator(20) as (second, _):
        settings = gateway_settings([first, second], tmp_path, request_timeout=60)
        with serving_in_thread(create_app(settings)) as url:

            async def scenario() -> list[tuple[str, httpx.Response]]:
                async with httpx.AsyncClient(timeout=60) as client:
                    runs = [
                        (path, asyncio.create_task(client.post(f"{url}{path}", json=body)))
                        for path, body, _ in SURFACES
                        for _ in range(20)
                    ]
                    await asyncio.sleep(0.4)
                    victim.send_signal(signal.SIGKILL)
                    return [(path, await run) for path, run in runs]

            replies = asyncio.run(scenario())
    failed = [(p, r.status_code, r.text[:200]) for p, r in replies if r.status_code != 200]
    assert not failed, failed[:3]
    for path, reply in replies:
        key = next(k for p, _, k in SURFACES if p == path)
        assert reply.json()[key], reply.text
