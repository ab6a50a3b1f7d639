"""The SSE contract of /gateway/generate/stream and /gateway/chat/stream."""

from __future__ import annotations

import json

import httpx

from tests.api.conftest import set_faults, sse_events


async def test_generate_stream_sends_chunks_then_one_result(client: httpx.AsyncClient) -> None:
    body = {"model": "llama3.1:8b", "prompt": "Write a haiku"}
    r = await client.post("/gateway/generate/stream", json=body)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    names = [name for name, _ in events]
    assert names[-1] == "result" and names.count("result") == 1
    assert set(names[:-1]) == {"chunk"}
    chunks = [json.loads(data) for name, data in events if name == "chunk"]
    assert [c["index"] for c in chunks] == list(range(len(chunks)))
    result = json.loads(events[-1][1])
    assert result["success"] is True
    assert result["response"] == "".join(c["content"] for c in chunks)
    plain = await client.post("/gateway/generate", json=body)
    assert plain.json()["response"] == result["response"]


async def test_chat_stream_follows_the_same_contract(client: httpx.AsyncClient) -> None:
    body = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "Hi"}]}
    events = sse_events((await client.post("/gateway/chat/stream", json=body)).text)
    assert events[-1][0] == "result"
    result = json.loads(events[-1][1])
    chunks = "".join(json.loads(d)["content"] for n, d in events if n == "chunk")
    assert result["response"] == chunks and result["prompt"] == "Hi"


async def test_an_unknown_model_ends_the_stream_with_one_error_event(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post("/gateway/generate/stream", json={"model": "nope:1b", "prompt": "x"})
    events = sse_events(r.text)
    assert [name for name, _ in events] == ["error"]
    error = json.loads(events[0][1])
    assert error["code"] == "model_not_found" and "nope:1b" in error["message"]


async def test_a_stream_cut_by_the_backend_ends_with_an_error_after_its_chunks(
    client: httpx.AsyncClient, emulator_url: str
) -> None:
    set_faults(emulator_url, cut_after_chunks=3)
    r = await client.post("/gateway/generate/stream", json={"model": "llama3.1:8b", "prompt": "x"})
    events = sse_events(r.text)
    assert [name for name, _ in events] == ["chunk", "chunk", "chunk", "error"]
    assert json.loads(events[-1][1])["code"] in {"backend_error", "backend_unavailable"}


async def test_invalid_stream_request_is_a_422_before_any_event(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post("/gateway/generate/stream", json={"model": "llama3.1:8b"})
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
