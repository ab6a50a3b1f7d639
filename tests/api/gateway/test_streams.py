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


async def test_a_run_that_fails_at_once_is_a_problem_not_a_stream(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post("/gateway/generate/stream", json={"model": "nope:1b", "prompt": "x"})
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "nope:1b" in r.json()["detail"]


async def test_a_failure_after_the_stream_started_is_one_error_event(
    client: httpx.AsyncClient, emulator_url: str
) -> None:
    # The first token comes after the early-error window, the deadline before it.
    set_faults(emulator_url, first_token_delay_ms=2500)
    body = {"model": "llama3.1:8b", "prompt": "x", "options": {"timeout": 2}}
    r = await client.post("/gateway/generate/stream", json=body)
    assert r.status_code == 200
    events = sse_events(r.text)
    assert [name for name, _ in events] == ["error"]
    assert json.loads(events[0][1])["code"] == "timeout"


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
