"""The OpenAI API at `/v1`: the unmodified `openai` client, pointed at the gateway, works;
requests are translated to Ollama's native API, and runs are stored as surface `openai`."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from app.main import create_app
from tests.api.conftest import gateway_settings, set_faults
from tests.support.servers import serving_in_thread


@pytest.fixture
def gateway_url(emulator_url: str, tmp_path: Path) -> Iterator[str]:
    with serving_in_thread(create_app(gateway_settings([emulator_url], tmp_path))) as url:
        yield url


@pytest.fixture
def client(gateway_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="unused", max_retries=0)


def stored(gateway: str, **query: Any) -> list[dict[str, Any]]:
    reply = httpx.get(f"{gateway}/gateway/results", params=query, timeout=10)
    items: list[dict[str, Any]] = reply.json()["items"]
    return items


def test_models_are_listed_and_retrieved(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert {"llama3.1:8b", "qwen2.5:0.5b", "nomic-embed-text:latest"} <= set(ids)
    model = client.models.retrieve("llama3.1:8b")
    assert model.id == "llama3.1:8b" and model.owned_by == "library" and model.created > 0
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope:1b")


def test_a_chat_completion(client: openai.OpenAI, emulator_url: str) -> None:
    reply = client.chat.completions.create(
        model="llama3.1:8b",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"},
        ],
        max_tokens=6,
        seed=5,
    )
    assert reply.object == "chat.completion" and reply.model == "llama3.1:8b"
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 6
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 6
    # the same run through Ollama's native API gives the same text
    native = httpx.post(
        f"{emulator_url}/api/chat",
        json={
            "model": "llama3.1:8b",
            "stream": False,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello"},
            ],
            "options": {"num_predict": 6, "seed": 5, "temperature": 1.0, "top_p": 1.0},
        },
        timeout=10,
    ).json()
    assert choice.message.content == native["message"]["content"]


def test_a_streamed_chat_with_usage(client: openai.OpenAI, emulator_url: str) -> None:
    set_faults(emulator_url, token_delay_ms=5)
    stream = client.chat.completions.create(
        model="llama3.1:8b",
        messages=[{"role": "user", "content": "Tell me something"}],
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finishing] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 10


def test_the_raw_stream_ends_with_done(gateway_url: str) -> None:
    body = {"model": "llama3.1:8b", "stream": True, "max_tokens": 3,
            "messages": [{"role": "user", "content": "Hi"}]}  # fmt: skip
    with httpx.stream("POST", f"{gateway_url}/v1/chat/completions", json=body) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in reply.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] == "length"


def test_json_mode_and_tools_are_mapped_both_ways(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="llama3.1:8b",
        messages=[{"role": "user", "content": "Give me JSON"}],
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)

    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    reply = client.chat.completions.create(
        model="llama3.1:8b",
        messages=[{"role": "user", "content": "Call get_weather for Paris"}],
        tools=tools,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert calls and calls[0].function.name == "get_weather"
    arguments = json.loads(calls[0].function.arguments)
    assert isinstance(arguments, dict)
    # the tool's answer goes back in OpenAI's shape and is accepted
    follow_up = client.chat.completions.create(
        model="llama3.1:8b",
        messages=[
            {"role": "user", "content": "Call get_weather for Paris"},
            choice.message.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": calls[0].id, "content": '{"temp": 21}'},
        ],
        tools=tools,
    )
    assert follow_up.choices[0].message is not None


def test_completions_plain_and_streamed(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="llama3.1:8b", prompt="Once upon", max_tokens=4)
    assert reply.object == "text_completion" and reply.choices[0].text
    assert reply.choices[0].finish_reason == "length" and reply.usage is not None
    pieces = list(
        client.completions.create(model="llama3.1:8b", prompt="Once", max_tokens=4, stream=True)
    )
    assert "".join(p.choices[0].text for p in pieces if p.choices)
    assert pieces[-1].choices[0].finish_reason == "length"


def test_embeddings_float_and_base64(client: openai.OpenAI) -> None:
    reply = client.embeddings.create(model="nomic-embed-text", input=["a", "b"])
    assert [d.index for d in reply.data] == [0, 1] and len(reply.data[0].embedding) > 10
    assert reply.usage.prompt_tokens > 0
    raw = httpx.post(
        f"{client.base_url}embeddings",
        json={"model": "nomic-embed-text", "input": "a", "encoding_format": "base64"},
    ).json()
    packed = base64.b64decode(raw["data"][0]["embedding"])
    floats = struct.unpack(f"<{len(packed) // 4}f", packed)
    assert floats == pytest.approx(reply.data[0].embedding, rel=1e-6)


def test_errors_have_openais_shape(client: openai.OpenAI, gateway_url: str) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(
            model="nope:1b", messages=[{"role": "user", "content": "Hi"}]
        )
    assert "nope:1b" in raised.value.message
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="nope:1b", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope:1b", input="x")
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="llama3.1:8b", messages=[])
    assert "too short" in bad.value.message

    cases: list[tuple[str, Any, str]] = [
        ("/v1/chat/completions", {"model": "llama3.1:8b"}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, "model"),
        ("/v1/chat/completions", {"model": "llama3.1:8b", "temperature": "hot",
                                  "messages": [{"role": "user", "content": "x"}]}, "temperature"),
        ("/v1/completions", {"model": "llama3.1:8b", "prompt": ""}, "prompt"),
        ("/v1/embeddings", {"model": "nomic-embed-text", "input": []}, "invalid input"),
        ("/v1/embeddings", {"model": "nomic-embed-text", "input": "x", "encoding_format": "hex"},
         "encoding_format"),
    ]  # fmt: skip
    for path, body, mentions in cases:
        reply = httpx.post(gateway_url + path, json=body, timeout=10)
        assert reply.status_code == 400, (path, body, reply.text)
        error = reply.json()["error"]
        assert error["type"] == "invalid_request_error" and mentions in error["message"], error
    not_json = httpx.post(f"{gateway_url}/v1/chat/completions", content=b"{oops", timeout=10)
    assert not_json.status_code == 400 and "error" in not_json.json()
    image_url = httpx.post(
        f"{gateway_url}/v1/chat/completions",
        json={"model": "llama3.1:8b", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]},
        timeout=10,
    )  # fmt: skip
    assert image_url.status_code == 400 and "base64" in image_url.json()["error"]["message"]


def test_a_backend_down_is_a_503_in_openais_shape(tmp_path: Path) -> None:
    from tests.support.servers import free_port

    settings = gateway_settings([f"http://127.0.0.1:{free_port()}"], tmp_path)
    with serving_in_thread(create_app(settings)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError) as raised:
            client.chat.completions.create(
                model="llama3.1:8b", messages=[{"role": "user", "content": "Hi"}]
            )
        assert raised.value.status_code == 503


def test_runs_are_stored_as_surface_openai(client: openai.OpenAI, gateway_url: str) -> None:
    client.chat.completions.create(
        model="llama3.1:8b", messages=[{"role": "user", "content": "kept chat"}], max_tokens=3
    )
    list(client.completions.create(model="llama3.1:8b", prompt="kept stream", stream=True))
    runs = {r["prompt"]: r for r in stored(gateway_url, surface="openai")}
    assert runs["kept chat"]["kind"] == "chat" and runs["kept chat"]["tokens_used"] == 3
    assert runs["kept stream"]["kind"] == "stream" and runs["kept stream"]["response"]
    assert stored(gateway_url, surface="ollama") == []


def test_storing_openai_runs_can_be_turned_off(emulator_url: str, tmp_path: Path) -> None:
    settings = gateway_settings([emulator_url], tmp_path, store_openai_api=False)
    with serving_in_thread(create_app(settings)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        client.chat.completions.create(
            model="llama3.1:8b", messages=[{"role": "user", "content": "not kept"}]
        )
        assert stored(url) == []


def test_a_stream_cut_mid_way_ends_with_an_error_event(
    client: openai.OpenAI, gateway_url: str, emulator_url: str
) -> None:
    set_faults(emulator_url, cut_after_chunks=3, token_delay_ms=20)
    stream = client.chat.completions.create(
        model="llama3.1:8b",
        messages=[{"role": "user", "content": "cut me"}],
        max_tokens=20,
        stream=True,
    )
    received: list[str] = []
    with pytest.raises(openai.APIError) as raised:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert (
        "".join(received) and "the backend closed the connection mid-reply" in raised.value.message
    )
    run = stored(gateway_url, surface="openai")[0]
    assert run["status"] == "failed" and run["metadata"]["partial_response"] == "".join(received)


def test_a_streamed_tool_call(client: openai.OpenAI) -> None:
    tools: Any = [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}}}}]  # fmt: skip
    chunks = list(
        client.chat.completions.create(
            model="llama3.1:8b",
            messages=[{"role": "user", "content": "please lookup cats"}],
            tools=tools,
            stream=True,
        )
    )
    calls = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert calls and calls[0].choices[0].delta.tool_calls[0].function.name == "lookup"  # type: ignore[index, union-attr]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
