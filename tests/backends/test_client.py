"""OllamaClient against the emulator: typed calls, NDJSON streams, and the error mapping."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from app.backends import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    OllamaClient,
    StreamInterrupted,
)
from app.backends.client import TRANSPORTS


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """Every client test runs on httpx's own transport and on aiohttp directly."""
    return str(request.param)


MODEL = "llama3.1:8b"


async def test_version_ping_and_tags(transport: str, emulator_url: str) -> None:
    client = OllamaClient(emulator_url, transport=transport)
    assert await client.ping()
    assert await client.version()
    names = {m["name"] for m in await client.tags()}
    assert names == {"llama3.1:8b", "qwen2.5:0.5b", "nomic-embed-text:latest"}
    await client.aclose()


async def test_show_and_ps(transport: str, emulator_url: str) -> None:
    client = OllamaClient(emulator_url, transport=transport)
    shown = await client.show(MODEL)
    assert "details" in shown and "capabilities" in shown
    await client.generate({"model": MODEL, "prompt": "load me"})
    assert MODEL in {m["name"] for m in await client.ps()}
    await client.aclose()


async def test_unknown_model_is_a_404_with_ollamas_text(transport: str, emulator_url: str) -> None:
    client = OllamaClient(emulator_url, transport=transport)
    with pytest.raises(BackendError) as caught:
        await client.show("nonexistent-model")
    assert caught.value.status == 404
    assert "not found" in caught.value.message
    await client.aclose()


async def test_generate_stream_ends_with_done_and_matches_non_stream(
    transport: str, emulator_url: str
) -> None:
    client = OllamaClient(emulator_url, transport=transport)
    body = {"model": MODEL, "prompt": "Tell me a story", "options": {"seed": 3}}
    chunks = [c async for c in client.generate_stream(body)]
    whole = await client.generate(body)
    assert chunks[-1]["done"] is True and not any(c["done"] for c in chunks[:-1])
    assert "".join(c["response"] for c in chunks) == whole["response"]
    assert chunks[-1]["eval_count"] == whole["eval_count"]
    await client.aclose()


async def test_chat_stream_and_chat(transport: str, emulator_url: str) -> None:
    client = OllamaClient(emulator_url, transport=transport)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    chunks = [c async for c in client.chat_stream(body)]
    whole = await client.chat(body)
    assert "".join(c["message"]["content"] for c in chunks) == whole["message"]["content"]
    await client.aclose()


async def test_a_cut_stream_raises_stream_interrupted(
    transport: str, emulator_url: str, faults: Callable[..., None]
) -> None:
    faults(cut_after_chunks=2)
    client = OllamaClient(emulator_url, transport=transport)
    received: list[dict[str, Any]] = []
    with pytest.raises(StreamInterrupted):
        async for chunk in client.generate_stream({"model": MODEL, "prompt": "Tell a story"}):
            received.append(chunk)
    assert 0 < len(received) <= 2
    await client.aclose()


async def test_a_500_carries_the_backend_message(
    transport: str, emulator_url: str, faults: Callable[..., None]
) -> None:
    faults(fail_next=1, fail_status=500, fail_message="runner crashed")
    client = OllamaClient(emulator_url, transport=transport)
    with pytest.raises(BackendError) as caught:
        async for _ in client.generate_stream({"model": MODEL, "prompt": "x"}):
            pass
    assert (caught.value.status, caught.value.message) == (500, "runner crashed")
    await client.aclose()


async def test_a_stall_beyond_the_timeout_raises_backend_timeout(
    transport: str, emulator_url: str, faults: Callable[..., None]
) -> None:
    faults(stall_ms=5000)
    client = OllamaClient(emulator_url, transport=transport, timeout=0.5)
    with pytest.raises(BackendTimeout):
        await client.generate({"model": MODEL, "prompt": "x"})
    await client.aclose()


async def test_nobody_listening_is_backend_unavailable(transport: str, down_url: str) -> None:
    client = OllamaClient(down_url, transport=transport)
    assert not await client.ping()
    with pytest.raises(BackendUnavailable):
        await client.tags()
    await client.aclose()


async def test_pull_streams_progress_to_success(transport: str, emulator_url: str) -> None:
    client = OllamaClient(emulator_url, transport=transport)
    statuses = [line["status"] async for line in client.pull("phi3:mini")]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    await client.aclose()


async def test_pull_of_an_unknown_model_raises_the_error_line(
    transport: str, emulator_url: str
) -> None:
    client = OllamaClient(emulator_url, transport=transport)
    with pytest.raises(BackendError) as caught:
        async for _ in client.pull("no-such-model-anywhere:1b"):
            pass
    assert caught.value.status == 200 and "file does not exist" in caught.value.message
    await client.aclose()


async def test_copy_embed_and_delete(transport: str, emulator_url: str) -> None:
    client = OllamaClient(emulator_url, transport=transport)
    await client.copy(MODEL, "mycopy:latest")
    embedded = await client.embed("nomic-embed-text", ["a", "b"])
    assert len(embedded["embeddings"]) == 2
    await client.delete("mycopy:latest")
    assert "mycopy:latest" not in {m["name"] for m in await client.tags()}
    with pytest.raises(BackendError) as caught:
        await client.delete("mycopy:latest")
    assert caught.value.status == 404
    await client.aclose()


def test_one_client_serves_several_event_loops(transport: str, emulator_url: str) -> None:
    client = OllamaClient(emulator_url, transport=transport)

    async def use() -> int:
        return len(await client.tags())

    # Each asyncio.run is a new loop; a client bound to the first would fail in the second.
    assert asyncio.run(use()) == asyncio.run(use()) == 3
    asyncio.run(client.aclose())


async def test_leaving_a_stream_early_releases_the_connection(
    transport: str, emulator_url: str
) -> None:
    client = OllamaClient(emulator_url, transport=transport, max_connections=1)
    for _ in range(3):
        async with contextlib.aclosing(
            client.generate_stream({"model": MODEL, "prompt": "Tell a long story"})
        ) as stream:
            async for _chunk in stream:
                break
    # With one connection allowed, this would wait forever had a stream leaked it.
    assert await asyncio.wait_for(client.version(), timeout=5)
    await client.aclose()


async def test_relay_passes_replies_through_unparsed(transport: str, emulator_url: str) -> None:
    client = OllamaClient(emulator_url, transport=transport)
    reply = await client.relay(
        "POST",
        "/api/generate",
        content=b'{"model":"llama3.1:8b","prompt":"hi"}',
        headers={"content-type": "application/json"},
    )
    body = b"".join([piece async for piece in reply.body])
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("application/x-ndjson")
    lines = body.decode().splitlines()
    assert len(lines) > 1 and '"done":true' in lines[-1]

    missing = await client.relay("POST", "/api/show", content=b'{"model":"nonexistent"}')
    assert missing.status == 404
    assert b"not found" in b"".join([piece async for piece in missing.body])
    await client.aclose()
