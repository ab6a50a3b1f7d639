"""Streams continue elsewhere: a backend that fails mid-stream costs its clients a pause,
not their answer, on every surface (`/gateway` SSE, Ollama's `/api` NDJSON, OpenAI's `/v1`
SSE, Anthropic's `/v1/messages` events). Another backend continues the answer from where
it stopped, and the emulator continues a partial answer exactly, so the text must equal an
undisturbed run's to the character: nothing repeated or lost at the seam."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from app.main import create_app
from tests.api.conftest import gateway_settings, set_faults
from tests.chaos.streams import (
    SURFACES,
    Streamed,
    request,
    stored_runs,
    stored_surface,
    stream,
)
from tests.support.servers import free_port, running_process, serving_in_thread

MODEL = "llama3.1:8b"
PACE_MS = 10
"""Token delay of the fault tests."""


@contextlib.contextmanager
def emulator(
    token_delay_ms: float, reply_tokens: int
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """An emulator process whose answers are `reply_tokens` long (its URL and process)."""
    port = free_port()
    args = [sys.executable, "-m", "app.cli", "emulator", "--host", "127.0.0.1", "--port",
            str(port), "--models", MODEL, "--token-delay-ms", str(token_delay_ms),
            "--reply-tokens", str(reply_tokens)]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with running_process(args, url + "/") as proc:
        yield url, proc


def stored_of(runs: list[dict[str, Any]], got: Streamed) -> dict[str, Any]:
    """The stored result of one stream: by id for `/gateway`, else by prompt and surface."""
    if got.surface.startswith("gateway"):
        stored_id = got.final.get("id") or got.final.get("result_id")
        return next(r for r in runs if r["id"] == stored_id)
    surface = stored_surface(got.surface)
    (match,) = [
        r for r in runs if r["prompt"] == got.prompt and r["metadata"].get("surface") == surface
    ]
    return match


def eval_count(got: Streamed) -> int | None:
    """The tokens the stream's final event reports."""
    if got.surface.startswith("gateway"):
        return got.final.get("tokens_used")
    if got.surface.startswith("api"):
        return got.final.get("eval_count")
    usage = got.final.get("usage") or {}
    return usage.get("output_tokens" if got.surface == "v1-messages" else "completion_tokens")


def test_20_streams_on_every_surface_survive_a_backend_killed_mid_way(tmp_path: Path) -> None:
    """20 concurrent streams (chat and generate; `/gateway`, `/api`, `/v1`) over two
    backends, one SIGKILLed while they are half-way: all 20 end with a successful result
    whose text (streamed and stored) equals an undisturbed run's; those that were on the
    killed backend say they were resumed, and on which backends; token counts add up."""
    tokens, delay_ms = 60, 25  # 1.5 s a stream
    prompts = [f"story {i}: tell me a long story" for i in range(20)]
    surfaces = [SURFACES[i % len(SURFACES)] for i in range(20)]
    with emulator(delay_ms, tokens) as (first, victim), emulator(delay_ms, tokens) as (second, _):
        settings = gateway_settings([first, second], tmp_path, request_timeout=60)
        with serving_in_thread(create_app(settings)) as url:

            async def scenario() -> tuple[list[Streamed], list[Streamed], list[dict[str, Any]]]:
                async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                    calm = await asyncio.gather(
                        *(
                            stream(client, s, MODEL, p)
                            for s, p in zip(surfaces, prompts, strict=True)
                        )
                    )
                    before = {r["id"] for r in await stored_runs(client)}
                    runs = [
                        asyncio.create_task(stream(client, s, MODEL, p))
                        for s, p in zip(surfaces, prompts, strict=True)
                    ]
                    await asyncio.sleep(tokens * delay_ms / 1000 / 2)  # half-way
                    victim.send_signal(signal.SIGKILL)
                    stormy = await asyncio.gather(*runs)
                    stored = [r for r in await stored_runs(client) if r["id"] not in before]
                    return list(calm), list(stormy), stored

            started = time.monotonic()
            calm, stormy, stored = asyncio.run(scenario())
            took = time.monotonic() - started

    assert all(c.ok and len(c.text) > 100 for c in calm), [c.final for c in calm if not c.ok]
    failed = [(s.surface, s.status, s.final) for s in stormy if not s.ok]
    assert not failed, failed[:3]
    assert len(stored) == 20
    resumed: list[dict[str, Any]] = []
    for undisturbed, got in zip(calm, stormy, strict=True):
        assert got.text == undisturbed.text, (got.surface, got.text, undisturbed.text)
        run = stored_of(stored, got)
        assert run["success"] and run["response"] == undisturbed.text, (got.surface, run)
        assert eval_count(got) == eval_count(undisturbed) == tokens, got.surface
        meta = run["metadata"]
        assert meta["eval_count"] == tokens, (got.surface, meta)
        if meta.get("resumed"):
            resumed.append(meta)
            assert meta["backends"] == [first, second] and meta["backend"] == second, meta
            (seam,) = meta["resumes"]
            assert seam["backend"] == first and 0 < seam["after_tokens"] < tokens
            assert seam["after_chars"] == len(undisturbed.text[: seam["after_chars"]])
        else:
            assert meta["backend"] == second, (got.surface, meta)
    assert resumed, "no stream was on the killed backend"
    pauses = sorted(m["resumes"][0]["pause"] for m in resumed)
    kinds = sorted({m.get("surface", "gateway") + "/" + m["kind"] for m in resumed})
    print(  # for the record (-s)
        f"\n20 of 20 streams whole in {took:.1f} s (both rounds); {len(resumed)} were on the "
        f"killed backend and resumed ({', '.join(kinds)}); pause at the seam "
        f"{pauses[0] * 1000:.0f}-{pauses[-1] * 1000:.0f} ms (median "
        f"{pauses[len(pauses) // 2] * 1000:.0f} ms)"
    )


async def both_rounds(
    url: str,
    backends: list[str],
    faults: dict[str, Any],
    surfaces: tuple[str, ...] = SURFACES,
    limit: int | None = None,
) -> tuple[list[Streamed], list[Streamed], list[dict[str, Any]]]:
    """Each surface once (all at once) undisturbed, then once with `faults` on every
    backend; and the stored results of the faulted round.

    The undisturbed round goes first so that the gateway is warm (a run that started late,
    after two failures in a row had opened a backend's circuit, would find one backend)."""
    prompts = [f"question {i} about recursion" for i in range(len(surfaces))]
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        calm = await asyncio.gather(
            *(stream(client, s, MODEL, p, limit) for s, p in zip(surfaces, prompts, strict=True))
        )
        before = {r["id"] for r in await stored_runs(client)}
        for backend in backends:
            set_faults(backend, **faults)
        faulted = await asyncio.gather(
            *(stream(client, s, MODEL, p, limit) for s, p in zip(surfaces, prompts, strict=True))
        )
        stored = [r for r in await stored_runs(client) if r["id"] not in before]
    return list(faulted), list(calm), stored


def test_an_error_line_mid_stream_is_continued_exactly_on_every_surface(tmp_path: Path) -> None:
    """Each backend fails every reply after 7 tokens (Ollama's in-stream `error` line):
    answers of 12 tokens are cut on the first backend and finished on the other, on every
    surface, to the character; the result says where the seam was and the counts add up."""
    with emulator(PACE_MS, 12) as (first, _), emulator(PACE_MS, 12) as (second, _):
        settings = gateway_settings([first, second], tmp_path)
        with serving_in_thread(create_app(settings)) as url:
            faulted, calm, stored = asyncio.run(
                both_rounds(url, [first, second], {"fail_after_tokens": 7})
            )
    for got, undisturbed in zip(faulted, calm, strict=True):
        assert got.ok and undisturbed.ok, (got.surface, got.final, undisturbed.final)
        assert got.text == undisturbed.text and got.pieces[7:] == undisturbed.pieces[7:]
        assert eval_count(got) == eval_count(undisturbed) == 12, got.surface
        meta = stored_of(stored, got)["metadata"]
        assert meta["resumed"] is True and len(meta["backends"]) == 2, (got.surface, meta)
        assert meta["backends"][-1] == meta["backend"] != meta["backends"][0]
        (seam,) = meta["resumes"]
        assert (seam["after_tokens"], seam["error"]) == (7, "emulated failure"), seam
        assert seam["after_chars"] == len("".join(undisturbed.pieces[:7]))
        assert meta["eval_count"] == 12 and meta["failed_over_from"], meta


def test_a_stream_cut_where_its_token_limit_ends_is_complete(tmp_path: Path) -> None:
    """A backend that fails right after the last token a stream may have (its `num_predict`)
    leaves nothing to continue: the answer is complete as it is, no backend is asked."""
    with emulator(PACE_MS, 12) as (first, _), emulator(PACE_MS, 12) as (second, _):
        settings = gateway_settings([first, second], tmp_path)
        with serving_in_thread(create_app(settings)) as url:
            faulted, calm, stored = asyncio.run(
                both_rounds(url, [first, second], {"fail_after_tokens": 5}, limit=5)
            )
    for got, undisturbed in zip(faulted, calm, strict=True):
        assert got.ok and got.text == undisturbed.text, (got.surface, got.final)
        assert len(got.pieces) == 5
        meta = stored_of(stored, got)["metadata"]
        assert meta["resumed"] is True and meta["done_reason"] == "length", meta
        assert meta["eval_count"] == 5 and meta["resumes"][0]["pause"] is None, meta


IMAGE = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8/5+hHgAHggJ/PchI7wAAAABJRU5ErkJggg=="


def test_a_stream_with_images_ends_with_a_clean_error_and_its_partial_text(
    tmp_path: Path,
) -> None:
    """Continuation is not possible for an input with images: the stream cut mid-way ends
    with an error event (`/v1`) or line (`/api`), and the stored failed result keeps the
    partial text and says why it was not resumed."""
    prompt = "what is in this picture"
    bodies: dict[str, dict[str, Any]] = {
        "v1-chat": {
            "model": MODEL,
            "stream": True,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": prompt},
                        {
                            "type": "image_url",
                            "image_url": {"url": f"data:image/png;base64,{IMAGE}"},
                        },
                    ],
                }
            ],
        },
        "api-chat": {
            "model": MODEL,
            "messages": [{"role": "user", "content": prompt, "images": [IMAGE]}],
        },
        "api-generate": {"model": MODEL, "prompt": prompt, "images": [IMAGE]},
        "v1-messages": {
            "model": MODEL,
            "max_tokens": 100,
            "stream": True,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": prompt},
                        {"type": "image", "source": {"type": "base64", "data": IMAGE}},
                    ],
                }
            ],
        },
    }
    with emulator(PACE_MS, 12) as (first, _), emulator(PACE_MS, 12) as (second, _):
        settings = gateway_settings([first, second], tmp_path)
        with serving_in_thread(create_app(settings)) as url:

            async def scenario() -> tuple[list[Streamed], list[dict[str, Any]]]:
                async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                    for backend in (first, second):
                        set_faults(backend, fail_after_tokens=4)
                    got = [
                        await stream(client, surface, MODEL, prompt, body=body)
                        for surface, body in bodies.items()
                    ]
                    return got, await stored_runs(client)

            streams, stored = asyncio.run(scenario())
    for got in streams:
        assert got.status == 200 and not got.ok, (got.surface, got.final)
        assert len(got.pieces) == 4 and got.final.get("error"), (got.surface, got.final)
        surface = stored_surface(got.surface)
        (run,) = [r for r in stored if r["metadata"].get("surface") == surface
                  and r["metadata"]["kind"] == ("generate" if "generate" in got.surface else "chat")
                  and r["prompt"] == prompt]  # fmt: skip
        meta = run["metadata"]
        assert not run["success"] and meta["partial_response"] == got.text, run
        assert "images" in meta["not_resumed"] and not meta.get("resumed"), meta


def test_a_client_that_leaves_during_the_continuation_cancels_it(tmp_path: Path) -> None:
    """A client that goes away while a resumed stream goes on (`/api`, then `/v1`): the
    run is stored as cancelled, resumed on both backends, with the text it had; no request
    slot is left taken. Tokens come every 100 ms here, so the client is gone two token
    intervals before the continuation's own backend fails at token 8, even on a busy machine."""
    pace_ms = 100
    with emulator(pace_ms, 40) as (first, _), emulator(pace_ms, 40) as (second, _):
        settings = gateway_settings([first, second], tmp_path)
        with serving_in_thread(create_app(settings)) as url:

            async def leave(client: httpx.AsyncClient, surface: str) -> int:
                path, body = request(surface, MODEL, f"leaving on {surface}")
                lines = 0
                async with client.stream("POST", path, json=body) as reply:
                    async for line in reply.aiter_lines():
                        lines += bool(line.strip())
                        if lines == 6:  # just after the seam (4 tokens), well before token 8
                            return lines
                return lines

            async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
                async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                    for backend in (first, second):
                        set_faults(backend, fail_after_tokens=4)
                    for surface in ("api-chat", "v1-chat"):
                        assert await leave(client, surface) == 6
                    await asyncio.sleep(0.5)  # the gateway sees the disconnects
                    backends = (await client.get("/gateway/backends")).json()
                    return await stored_runs(client), backends

            stored, backends = asyncio.run(scenario())
    assert len(stored) == 2
    for run in stored:
        meta = run["metadata"]
        assert run["status"] == "cancelled" and not run["success"], run
        assert meta["resumed"] is True and len(meta["backends"]) == 2, meta
        assert meta["resumes"][0]["after_tokens"] == 4 and len(meta["partial_response"]) > 0
    assert [b["outstanding"] for b in backends] == [0, 0], backends


def test_anthropic_streams_survive_a_backend_killed_mid_way(tmp_path: Path) -> None:
    """Claude Code's door: 6 streamed `/v1/messages` read by the official SDK
    (`messages.stream`) over two backends, one SIGKILLed half-way: each ends with its
    normal last events (`message_delta` with `end_turn`, `message_stop`), its text equals an
    undisturbed run's, and those that were on the killed backend were continued."""
    import anthropic

    tokens, delay_ms = 60, 25
    prompts = [f"session {i}: explain recursion at length" for i in range(6)]
    with emulator(delay_ms, tokens) as (first, victim), emulator(delay_ms, tokens) as (second, _):
        settings = gateway_settings([first, second], tmp_path, request_timeout=60)
        with serving_in_thread(create_app(settings)) as url:
            client = anthropic.AsyncAnthropic(base_url=url, api_key="unused", max_retries=0)

            async def one(prompt: str) -> tuple[str, list[str], Any]:
                async with client.messages.stream(
                    model=MODEL, max_tokens=1000, messages=[{"role": "user", "content": prompt}]
                ) as streamed:
                    kinds = [event.type async for event in streamed]
                    final = await streamed.get_final_message()
                return final.content[0].text, kinds, final  # type: ignore[union-attr]

            async def scenario() -> tuple[list[Any], list[Any], list[dict[str, Any]]]:
                calm = await asyncio.gather(*(one(p) for p in prompts))
                async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                    before = {r["id"] for r in await stored_runs(http)}
                    runs = [asyncio.create_task(one(p)) for p in prompts]
                    await asyncio.sleep(tokens * delay_ms / 1000 / 2)
                    victim.send_signal(signal.SIGKILL)
                    stormy = await asyncio.gather(*runs)
                    stored = [r for r in await stored_runs(http) if r["id"] not in before]
                return list(calm), list(stormy), stored

            calm, stormy, stored = asyncio.run(scenario())
    resumed = 0
    for (text, _, _), (got, kinds, final) in zip(calm, stormy, strict=True):
        assert got == text and len(text) > 100
        assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
        assert final.stop_reason == "end_turn" and final.usage.output_tokens == tokens
        (run,) = [r for r in stored if r["response"] == text]
        assert run["surface"] == "anthropic" and run["success"]
        resumed += bool(run["metadata"].get("resumed"))
    assert resumed, "no stream was on the killed backend"
