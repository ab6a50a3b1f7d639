"""A streamed `/v1/responses` survives its backend: SIGKILLed half-way through the answer,
the stream is continued on the other backend and ends as an undisturbed one does, with
`response.completed`, the same text to the character, and the same stored response."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx

from app.main import create_app
from tests.api.conftest import gateway_settings
from tests.chaos.streams import RESPONSES, Streamed, stored_runs, stream
from tests.chaos.test_stream_failover import MODEL, emulator
from tests.support.servers import serving_in_thread


def test_a_streamed_response_whose_backend_is_killed_ends_completed_and_whole(
    tmp_path: Path,
) -> None:
    tokens, delay_ms = 40, 25  # 1 s a stream
    prompts = [f"response {i}: tell me a long story" for i in range(6)]
    with emulator(delay_ms, tokens) as (first, one), emulator(delay_ms, tokens) as (second, two):
        processes = {first: one, second: two}
        settings = gateway_settings([first, second], tmp_path, request_timeout=60)
        with serving_in_thread(create_app(settings)) as url:

            async def scenario() -> tuple[list[Streamed], list[Streamed], list[dict[str, object]]]:
                async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                    calm = await asyncio.gather(
                        *(stream(client, RESPONSES, MODEL, p) for p in prompts)
                    )
                    before = {r["id"] for r in await stored_runs(client)}
                    runs = [
                        asyncio.create_task(stream(client, RESPONSES, MODEL, p)) for p in prompts
                    ]
                    await asyncio.sleep(tokens * delay_ms / 1000 / 2)  # half-way
                    # the backend answering (the pool keeps a warm model's runs together)
                    backends = (await client.get("/gateway/backends")).json()
                    busy = max(backends, key=lambda b: b["outstanding"])
                    processes[busy["url"]].send_signal(signal.SIGKILL)
                    stormy = await asyncio.gather(*runs)
                    stored = [r for r in await stored_runs(client) if r["id"] not in before]
                    responses = [
                        (await client.get(f"/v1/responses/{s.final['id']}")).json() for s in stormy
                    ]
                    return list(calm), list(stormy), [*stored, *responses]

            calm, stormy, found = asyncio.run(scenario())
    runs = [r for r in found if r.get("object") != "response"]
    responses = [r for r in found if r.get("object") == "response"]
    assert all(c.ok and len(c.text) > 50 for c in calm), [c.final for c in calm if not c.ok]
    assert all(s.ok for s in stormy), [s.final for s in stormy if not s.ok]
    resumed = 0
    for undisturbed, got, kept in zip(calm, stormy, responses, strict=True):
        assert got.text == undisturbed.text, (got.text, undisturbed.text)
        assert got.final["status"] == "completed"
        assert got.final["output"][0]["content"][0]["text"] == undisturbed.text
        assert got.final["usage"]["output_tokens"] == tokens
        # the stored response (read back through the run) is the same answer
        assert kept["output"][0]["content"][0]["text"] == undisturbed.text
        (run,) = [r for r in runs if r["metadata"].get("response_id") == got.final["id"]]
        assert run["metadata"]["surface"] == "responses" and run["response"] == undisturbed.text
        resumed += bool(run["metadata"].get("resumed"))
    assert resumed, "no stream was on the killed backend"
