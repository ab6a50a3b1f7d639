"""The emulator's prompt evaluation in time (`--prompt-eval-ms-per-token`), its parallel
slots (`--num-parallel`) and a generate's `context` read back into its prompt cache."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.servers import running_emulator

MODEL = "llama3.1:8b"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    args = ["--prompt-eval-ms-per-token", "0.5", "--num-parallel", "2", "--reply-tokens", "4"]
    with running_emulator(models=(MODEL,), extra_args=args) as base:
        yield base


def words(n: int, tag: str) -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


async def first_token_after(client: httpx.AsyncClient, body: dict[str, object]) -> float:
    """Seconds from sending a streamed generate to its first line with text."""
    started = time.perf_counter()
    async with client.stream("POST", "/api/generate", json=body) as reply:
        assert reply.status_code == 200
        async for line in reply.aiter_lines():
            if '"response":""' not in line:
                return time.perf_counter() - started
    raise AssertionError("no token came")


def test_uncached_prompt_tokens_delay_the_first_token(url: str) -> None:
    async def run() -> tuple[float, float]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            prompt = words(2000, "a")
            cold = await first_token_after(client, {"model": MODEL, "prompt": prompt})
            warm = await first_token_after(client, {"model": MODEL, "prompt": prompt})
            return cold, warm

    cold, warm = asyncio.run(run())
    assert cold >= 2004 * 0.5 / 1000  # the template's 4 tokens and the 2,000 words
    assert warm < 0.5, "the same prompt again: one token evaluated, at once"
    reply = httpx.post(
        f"{url}/api/generate",
        json={"model": MODEL, "prompt": words(300, "b"), "stream": False},
        timeout=30,
    ).json()
    # 304 tokens, of which the start marker and the user marker are cached from before
    assert reply["prompt_eval_count"] == 302
    assert reply["prompt_eval_duration"] == 302 * 500_000


def test_a_generates_context_is_its_cached_prefix(url: str) -> None:
    first = httpx.post(
        f"{url}/api/generate",
        json={"model": MODEL, "prompt": words(1500, "c"), "stream": False},
        timeout=30,
    ).json()
    assert len(first["context"]) == 1504 + 4  # the prompt's tokens and the answer's
    started = time.perf_counter()
    second = httpx.post(
        f"{url}/api/generate",
        json={"model": MODEL, "prompt": "and then?", "context": first["context"], "stream": False},
        timeout=30,
    ).json()
    took = time.perf_counter() - started
    new = ["<|user|>", "and", "then", "?", "<|end|>", "<|assistant|>"]
    assert second["prompt_eval_count"] == len(new)
    assert took < 1504 * 0.5 / 1000, "the context was not evaluated again"
    assert second["context"][: len(first["context"])] == first["context"]
    # the same context on a fresh prompt cache is evaluated whole
    httpx.post(f"{url}/api/generate", json={"model": MODEL, "keep_alive": 0}, timeout=10)
    again = httpx.post(
        f"{url}/api/generate",
        json={"model": MODEL, "prompt": "and then?", "context": first["context"], "stream": False},
        timeout=30,
    ).json()
    assert again["prompt_eval_count"] == len(first["context"]) + len(new)


def test_a_context_that_is_not_token_ids_is_refused_as_ollama_does(url: str) -> None:
    reply = httpx.post(
        f"{url}/api/generate",
        json={"model": MODEL, "prompt": "x", "context": [1, "two"], "stream": False},
        timeout=10,
    )
    assert reply.status_code == 400
    assert "GenerateRequest.context of type int" in reply.json()["error"]


def test_runs_beyond_num_parallel_wait_inside_the_server(url: str) -> None:
    """Four runs of 1,000 prompt tokens (0.5 s each) on two slots: two start at once, two
    wait for them, and the server says so while they wait."""

    async def run() -> tuple[list[float], int]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            bodies = [{"model": MODEL, "prompt": words(1000, f"p{i}_")} for i in range(4)]
            tasks = [asyncio.create_task(first_token_after(client, b)) for b in bodies]
            await asyncio.sleep(0.25)
            waiting = (await client.get("/_emulator/state")).json()["waiting"]
            return sorted(await asyncio.gather(*tasks)), waiting

    firsts, waiting = asyncio.run(run())
    assert waiting == 2
    assert firsts[1] < 1.0 and firsts[2] >= 1.0, firsts
