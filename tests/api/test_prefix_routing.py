"""Routing by expected time to first token (the prefix index): emulators that evaluate
prompts in time (`--prompt-eval-ms-per-token 0.5`, 2,000 tokens/s) with two parallel slots
(`--num-parallel 2`, so two cached prompts per model, as Ollama keeps them), the gateway in
a thread over them with `max=2` each, and the gateway's stored runs and the clients' own
clocks as the evidence. The same runs with `GATEWAY_PREFIX_ROUTING=false` are the control.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.main import create_app
from tests.api.conftest import gateway_settings
from tests.support.servers import running_emulator, serving_in_thread

MODEL = "llama3.1:8b"
LOAD = "qwen2.5:0.5b"
PER_TOKEN = 0.0005
FLAGS = ("--prompt-eval-ms-per-token", "0.5", "--num-parallel", "2")


def words(n: int, tag: str) -> str:
    """`n` tokens as the emulator counts them (each word one token)."""
    return " ".join(f"{tag}{i}" for i in range(n))


def warm(url: str, model: str = MODEL) -> None:
    body = {"model": model, "prompt": "", "keep_alive": "30m"}
    httpx.post(f"{url}/api/generate", json=body, timeout=10).raise_for_status()


@contextlib.contextmanager
def emulators(models: Sequence[Sequence[str]], *args: str) -> Iterator[list[str]]:
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(running_emulator(models=m, extra_args=[*FLAGS, *args]))
            for m in models
        ]


@contextlib.contextmanager
def gateway(tmp_path: Path, urls: Sequence[str], **settings: Any) -> Iterator[str]:
    backends = [f"b{i}={url};max=2" for i, url in enumerate(urls)]
    # a busy machine may take a second to answer an inventory probe: no backend left out
    app = create_app(gateway_settings(backends, tmp_path, health_timeout=5, **settings))
    with serving_in_thread(app) as url:
        yield url


async def streamed_chat(
    client: httpx.AsyncClient, messages: list[dict[str, str]], max_tokens: int = 4
) -> dict[str, Any]:
    """`POST /gateway/chat/stream`: the stored result its `result` event carries."""
    body = {"model": MODEL, "messages": messages, "options": {"max_tokens": max_tokens}}
    event = None
    async with client.stream("POST", "/gateway/chat/stream", json=body) as reply:
        assert reply.status_code == 200, await reply.aread()
        async for line in reply.aiter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event == "result":
                return dict(json.loads(line[5:]))
    raise AssertionError("no result event")


async def load(client: httpx.AsyncClient, tokens: int) -> float:
    """A run of the other model (on the first backend only) holding a slot for `tokens`
    tokens of 50 ms; when it ended (`time.monotonic`)."""
    body = {"model": LOAD, "prompt": "load", "options": {"max_tokens": tokens}, "save": False}
    reply = await client.post("/gateway/generate", json=body)
    assert reply.status_code == 200, reply.text
    return time.monotonic()


@pytest.mark.timeout(150)
def test_a_long_conversation_stays_while_the_wait_is_short_and_moves_when_it_is_not(
    tmp_path: Path,
) -> None:
    """An 8,000-token history is cached on backend A (4 s to evaluate again). With A's two
    slots busy and one request waiting, its next turn waits there (about 1.5 s) rather than
    evaluate its history again on idle B; with runs of 5 s in A's slots and three waiting,
    it moves to B and evaluates its history there (about 4 s). Both from the stored runs."""
    history: list[dict[str, str]] = [{"role": "system", "content": "You are a helpful agent."}]
    for i in range(8):
        history.append({"role": "user", "content": words(600, f"q{i}_")})
        history.append({"role": "assistant", "content": words(400, f"a{i}_")})

    async def run(url: str, b_url: str) -> tuple[dict[str, Any], ...]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            messages = [*history, {"role": "user", "content": "Where were we?"}]
            first = await streamed_chat(client, messages)
            warm(b_url)  # B has the model loaded too from now on (seen within 2 s)
            await asyncio.sleep(2.5)
            messages += [
                {"role": "assistant", "content": first["response"]},
                {"role": "user", "content": "Go on."},
            ]
            await asyncio.gather(load(client, 30), load(client, 30))  # A's runs: 1.5 s
            loads = [asyncio.create_task(load(client, 30)) for _ in range(3)]
            await asyncio.sleep(0.3)  # two run on A, one waits
            stayed = await streamed_chat(client, messages)
            await asyncio.gather(*loads)
            messages += [
                {"role": "assistant", "content": stayed["response"]},
                {"role": "user", "content": "And then?"},
            ]
            await asyncio.gather(load(client, 100), load(client, 100))  # now 5 s each
            loads = [asyncio.create_task(load(client, 100)) for _ in range(5)]
            await asyncio.sleep(0.3)  # two run on A, three wait
            asked = time.monotonic()
            moved = await streamed_chat(client, messages)
            a_free = min(await asyncio.gather(*loads)) - asked
            return first, stayed, moved, {"a_free": a_free}

    args = ("--token-delay-ms", "50", "--reply-tokens", "200")
    with emulators([(MODEL, LOAD), (MODEL,)], *args) as (a_url, b_url):
        warm(a_url)
        warm(a_url, LOAD)
        with gateway(tmp_path, [a_url, b_url]) as url:
            first, stayed, moved, waited = asyncio.run(run(url, b_url))
    meta = [r["metadata"] for r in (first, stayed, moved)]
    print([(m["backend"], m["time_to_first_token"], m["prompt_eval_count"]) for m in meta])
    reevaluation = 8000 * PER_TOKEN
    assert meta[0]["backend"] == a_url and meta[0]["prompt_eval_count"] > 8000
    # stays: its prefix cached on A, the wait there shorter than evaluating it on B
    assert meta[1]["backend"] == a_url
    assert meta[1]["prompt_eval_count"] < 50
    assert 0.8 < meta[1]["time_to_first_token"] < reevaluation
    # moves: A's wait is longer than evaluating the history again on B
    assert meta[2]["backend"] == b_url
    assert meta[2]["prompt_eval_count"] > 8000
    assert reevaluation <= meta[2]["time_to_first_token"] < waited["a_free"] + reevaluation
    assert waited["a_free"] > reevaluation, "A's slots were held longer than B took"


SYSTEM = words(4000, "s")
SURFACES = ("gateway", "api-chat", "v1-chat", "api-generate-context")


async def turn(
    client: httpx.AsyncClient,
    surface: str,
    messages: list[dict[str, str]],
    context: list[int] | None,
    session: str,
) -> tuple[int, str, list[int] | None]:
    """One turn on `surface`: (prompt_eval_count, reply, context)."""
    if surface == "gateway":
        body = {"model": MODEL, "messages": messages, "options": {"max_tokens": 4}, "save": False}
        result = (await client.post("/gateway/chat", json=body)).json()
        return result["metadata"]["prompt_eval_count"], result["response"], None
    if surface == "api-chat":
        body = {
            "model": MODEL,
            "messages": messages,
            "stream": False,
            "options": {"num_predict": 4},
        }
        reply = await client.post("/api/chat", json=body, headers={"x-session-affinity": session})
        data = reply.json()
        return data["prompt_eval_count"], data["message"]["content"], None
    if surface == "v1-chat":
        body = {"model": MODEL, "messages": messages, "max_tokens": 4, "prompt_cache_key": session}
        data = (await client.post("/v1/chat/completions", json=body)).json()
        return data["usage"]["prompt_tokens"], data["choices"][0]["message"]["content"], None
    prompt = messages[-1]["content"]
    body = {"model": MODEL, "prompt": prompt, "stream": False, "options": {"num_predict": 4}}
    if context is None:
        body["system"] = messages[0]["content"]
    else:
        body["context"] = context
    data = (await client.post("/api/generate", json=body)).json()
    return data["prompt_eval_count"], data["response"], data["context"]


async def sessions_sharing_a_system_prompt(url: str, surface: str) -> int:
    """Ten two-turn sessions with the same 4,000-token system prompt, started 0.2 s apart;
    their prompt_eval_count summed."""

    async def session(i: int) -> int:
        await asyncio.sleep(0.2 * i)
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Session {i}: look at module{i}.py please."},
        ]
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            first, reply, context = await turn(client, surface, messages, None, f"s{i}")
            messages += [
                {"role": "assistant", "content": reply},
                {"role": "user", "content": f"Now fix the bug in function f{i}."},
            ]
            second, _, _ = await turn(client, surface, messages, context, f"s{i}")
        return first + second

    return sum(await asyncio.gather(*(session(i) for i in range(10))))


@pytest.fixture(scope="module")
def four() -> Iterator[list[str]]:
    with emulators([(MODEL,)] * 4, "--token-delay-ms", "10") as urls:
        yield urls


@pytest.mark.timeout(150)
@pytest.mark.parametrize("surface", SURFACES)
def test_sessions_sharing_a_system_prompt_reuse_it(
    four: list[str], tmp_path: Path, surface: str
) -> None:
    counted = {}
    for routing in (True, False):
        for url in four:  # empty prompt caches, the model loaded everywhere
            httpx.post(f"{url}/_emulator/reset", timeout=10).raise_for_status()
            warm(url)
        with gateway(tmp_path / str(routing), four, prefix_routing=routing) as url:
            counted[routing] = asyncio.run(sessions_sharing_a_system_prompt(url, surface))
    print(surface, counted)
    # Without routing every backend evaluates the 4,000-token prompt (about 16,300 tokens
    # in all); with it, once (about 4,300), or twice when, on a loaded machine, a session
    # arrived as the first backend's queue looked longer than a fresh evaluation elsewhere
    # (8,320 seen in CI): at most two evaluations' worth, never the control's four.
    assert counted[True] <= counted[False] * 0.6


async def agent_sessions(url: str, n: int = 20, turns: int = 5) -> list[float]:
    """`n` agent sessions of `turns` turns on /v1/chat/completions, streamed, each naming
    itself (`prompt_cache_key`): a shared 4,000-token system prompt, a 2,000-token file
    read in its first turn, 300 tokens of tool output each turn after; started 0.2 s apart,
    0.2-1 s between a reply and the next turn. The time to first token of every turn, as
    the client saw it."""

    async def session(i: int) -> list[float]:
        rng = random.Random(i)
        await asyncio.sleep(0.2 * i)
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Task {i}: " + words(2000, f"f{i}_")},
        ]
        ttfts = []
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            for k in range(turns):
                body = {
                    "model": MODEL,
                    "messages": messages,
                    "stream": True,
                    "max_tokens": 10,
                    "prompt_cache_key": f"agent-{i}",
                }
                started, first, text = time.monotonic(), None, ""
                async with client.stream("POST", "/v1/chat/completions", json=body) as reply:
                    assert reply.status_code == 200, await reply.aread()
                    async for line in reply.aiter_lines():
                        if not line.startswith("data: {"):
                            continue
                        delta = json.loads(line[6:])["choices"]
                        piece = delta[0]["delta"].get("content") if delta else None
                        if piece:
                            first = first or time.monotonic()
                            text += piece
                assert first is not None
                ttfts.append(first - started)
                messages += [
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": words(300, f"t{i}_{k}_")},
                ]
                await asyncio.sleep(rng.uniform(0.2, 1.0))
        return ttfts

    return [t for ttfts in await asyncio.gather(*(session(i) for i in range(n))) for t in ttfts]


@pytest.mark.timeout(300)
def test_twenty_agent_sessions_get_their_first_tokens_twice_as_fast(tmp_path: Path) -> None:
    """Twenty concurrent five-turn agent sessions over ten backends: with the index, each
    turn goes where its history is cached; without, it is evaluated again wherever the
    turn lands. p50 time to first token at least 2x lower with the index."""
    p50 = {}
    with emulators([(MODEL,)] * 10, "--token-delay-ms", "10") as urls:
        for routing in (True, False):
            for url in urls:
                httpx.post(f"{url}/_emulator/reset", timeout=10).raise_for_status()
                warm(url)
            with gateway(tmp_path / str(routing), urls, prefix_routing=routing) as url:
                ttfts = asyncio.run(agent_sessions(url))
            p50[routing] = statistics.median(ttfts)
            print(routing, "p50", p50[routing], "max", max(ttfts))
    assert p50[True] * 2 <= p50[False]
