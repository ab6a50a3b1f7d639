"""Conversation affinity: a chat that extends an earlier one goes back to the backend that
served it, whose prompt cache makes the new turn's prompt evaluation cheap (the emulator
counts `prompt_eval_count` past the cached prefix, as Ollama does). Three emulators on
loopback, the gateway in a thread, a competing load of other runs of the same model."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.emulator.prompt_cache import split
from app.main import create_app
from tests.api.conftest import gateway_settings
from tests.support.servers import running_emulator, serving_in_thread

MODEL = "llama3.1:8b"
TURNS = ("Tell me about the sea, conversation {i}.", "And the waves?", "Thanks, one more?")
NEW_TOKEN_MARKERS = 4
"""Past the cached prefix (the prompt and answer of turn 1) the emulator's template adds
the end of the answer, the user marker, the end of the message and the assistant marker."""


@contextlib.contextmanager
def gateway(tmp_path: Path, **extra: Any) -> Iterator[tuple[str, list[str]]]:
    """A gateway over three emulators (10 tokens a reply, 10 ms apart; 32 prompts cached
    per model, so the competing runs do not push a conversation out)."""
    with contextlib.ExitStack() as stack:
        emulators = [
            stack.enter_context(
                running_emulator(
                    models=(MODEL,),
                    token_delay_ms=10,
                    extra_args=["--reply-tokens", "10", "--prompt-cache-slots", "32"],
                )
            )
            for _ in range(3)
        ]
        for url in emulators:  # loaded everywhere: no cold load tips the choice
            body = {"model": MODEL, "prompt": "warm up", "stream": False}
            httpx.post(f"{url}/api/generate", json=body, timeout=10).raise_for_status()
        # a limit the load stays under (a backend at its limit is not waited for), and the
        # emulators' 32 cached prompts: the gateway models a backend's prompt cache as one
        # prompt per slot, so with fewer the competing runs would push the conversations
        # out of its model of the cache while the emulators keep them
        backends = [f"b{i}={url};max=32" for i, url in enumerate(emulators)]
        app = create_app(gateway_settings(backends, tmp_path, **extra))
        yield stack.enter_context(serving_in_thread(app)), emulators


async def competing_load(client: httpx.AsyncClient, stop: asyncio.Event, n: int) -> int:
    """`n` loops of other runs of the model until `stop`; how many ran."""

    async def loop(k: int) -> int:
        jitter = random.Random(k)
        done = 0
        while not stop.is_set():
            body = {
                "model": MODEL,
                "prompt": f"load {k} {done}",
                "options": {"max_tokens": jitter.randint(1, 10)},  # 10 to 100 ms
                "save": False,
            }
            reply = await client.post("/gateway/generate", json=body)
            assert reply.status_code == 200, reply.text
            done += 1
            await asyncio.sleep(jitter.uniform(0, 0.03))
        return done

    return sum(await asyncio.gather(*(loop(k) for k in range(n))))


async def converse(client: httpx.AsyncClient, i: int) -> list[tuple[str, int]]:
    """Three turns of conversation `i` on `/gateway/chat`: (backend, prompt_eval_count)."""
    messages: list[dict[str, str]] = []
    turns: list[tuple[str, int]] = []
    pause = random.Random(1000 + i)
    for text in TURNS:
        await asyncio.sleep(pause.uniform(0, 0.2))  # the competing load moves on meanwhile
        messages.append({"role": "user", "content": text.format(i=i)})
        reply = await client.post(
            "/gateway/chat", json={"model": MODEL, "messages": messages, "save": False}
        )
        assert reply.status_code == 200, reply.text
        result = reply.json()
        turns.append((result["metadata"]["backend"], result["metadata"]["prompt_eval_count"]))
        messages.append({"role": "assistant", "content": result["response"]})
    return turns


async def conversations_under_load(url: str) -> tuple[list[list[tuple[str, int]]], int]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        stop = asyncio.Event()
        load = asyncio.create_task(competing_load(client, stop, 6))
        await asyncio.sleep(0.3)
        try:
            talks = await asyncio.gather(*(converse(client, i) for i in range(10)))
        finally:
            stop.set()
        return list(talks), await load


@pytest.mark.timeout(60)
def test_ten_conversations_under_a_competing_load_each_stay_on_one_backend(
    tmp_path: Path,
) -> None:
    with gateway(tmp_path) as (url, _):
        talks, competing = asyncio.run(conversations_under_load(url))
    first = [turns[0][0] for turns in talks]
    print("competing runs:", competing, "; turn-1 backends:", sorted(first))  # (-s)
    assert len(set(first)) >= 2, "the load spread the first turns over the backends"
    for i, turns in enumerate(talks):
        assert len({backend for backend, _ in turns}) == 1, (i, turns)
        new_tokens = len(split(TURNS[1])) + NEW_TOKEN_MARKERS
        assert turns[1][1] == new_tokens, (i, turns)
        assert turns[2][1] == len(split(TURNS[2])) + NEW_TOKEN_MARKERS, (i, turns)


@pytest.mark.timeout(60)
def test_without_affinity_the_same_load_moves_conversations(tmp_path: Path) -> None:
    """The control: affinity off (`GATEWAY_AFFINITY_TTL=0`), the same conversations and
    load move between backends, and a moved turn evaluates its whole prompt again."""
    with gateway(tmp_path, prefix_routing=False) as (url, _):
        talks, _ = asyncio.run(conversations_under_load(url))
    moved = [turns for turns in talks if len({backend for backend, _ in turns}) > 1]
    print("conversations that moved:", len(moved), "of", len(talks))
    assert moved
    for turns in moved:
        for (before, _), (after, count) in itertools.pairwise(turns):
            if after != before:
                assert count > len(split(TURNS[1])) + NEW_TOKEN_MARKERS


@pytest.mark.timeout(60)
def test_api_chat_and_openai_chat_go_back_to_their_backend(tmp_path: Path) -> None:
    """The same on `/api/chat` (streamed, as Ollama's clients send it) and on
    `/v1/chat/completions`, both under the competing load."""

    async def run(url: str) -> tuple[list[int], list[int]]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            stop = asyncio.Event()
            load = asyncio.create_task(competing_load(client, stop, 6))
            await asyncio.sleep(0.3)
            try:
                ollama = await asyncio.gather(*(api_chat(client, i) for i in range(5)))
                openai = await asyncio.gather(*(v1_chat(client, i) for i in range(5)))
            finally:
                stop.set()
            await load
            return ollama, openai

    with gateway(tmp_path) as (url, _):
        ollama, openai = asyncio.run(run(url))
    new_tokens = len(split(TURNS[1])) + NEW_TOKEN_MARKERS
    assert ollama == [new_tokens] * 5
    assert openai == [new_tokens] * 5


async def api_chat(client: httpx.AsyncClient, i: int) -> int:
    """Two turns on `/api/chat`, streamed; the second turn's `prompt_eval_count`."""
    messages = [{"role": "user", "content": TURNS[0].format(i=i)}]
    count = 0
    for turn in (1, 2):
        text = ""
        async with client.stream(
            "POST", "/api/chat", json={"model": MODEL, "messages": messages}
        ) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line:
                    chunk = json.loads(line)
                    text += chunk.get("message", {}).get("content", "")
                    count = chunk.get("prompt_eval_count", count)
        if turn == 1:
            messages += [
                {"role": "assistant", "content": text},
                {"role": "user", "content": TURNS[1]},
            ]
            await asyncio.sleep(0.05)
    return count


async def v1_chat(client: httpx.AsyncClient, i: int) -> int:
    """Two turns on `/v1/chat/completions`; the second turn's prompt tokens."""
    messages = [{"role": "user", "content": TURNS[0].format(i=i) + " (openai)"}]
    reply = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": messages})
    assert reply.status_code == 200, reply.text
    answer = reply.json()["choices"][0]["message"]["content"]
    messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": TURNS[1]}]
    await asyncio.sleep(0.05)
    reply = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": messages})
    assert reply.status_code == 200, reply.text
    return int(reply.json()["usage"]["prompt_tokens"])
