"""The emulator's `/v1/messages` answers as Ollama's Anthropic layer does: the official
`anthropic` SDK works against it unchanged, the text is the chat's, and what Ollama does not
do (no `ping`, no `count_tokens`, no `error` event) the emulator does not either."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import pytest

from tests.api.conftest import set_faults, sse_events

MODEL = "llama3.1:8b"
TOOLS: Any = [
    {
        "name": "get_weather",
        "description": "The weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]


@pytest.fixture
def client(emulator_url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=emulator_url, api_key="unused", max_retries=0)


def chat(emulator_url: str, messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    body = {"model": MODEL, "messages": messages, "stream": False, **extra}
    reply = httpx.post(f"{emulator_url}/api/chat", json=body, timeout=10)
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()
    return answer


def test_a_message_is_the_chats_answer(client: anthropic.Anthropic, emulator_url: str) -> None:
    system = [{"type": "text", "text": "Be brief."}, {"type": "text", "text": " Very."}]
    reply = client.messages.create(
        model=MODEL, max_tokens=6, system=system,  # type: ignore[arg-type]
        messages=[{"role": "user", "content": [{"type": "text", "text": "Hel"},
                                               {"type": "text", "text": "lo"}]}],
    )  # fmt: skip
    assert reply.id.startswith("msg_") and reply.model == MODEL and reply.role == "assistant"
    assert reply.stop_reason == "max_tokens" and reply.usage.output_tokens == 6
    # system blocks and text blocks are concatenated, max_tokens is num_predict
    native = chat(
        emulator_url,
        [{"role": "system", "content": "Be brief. Very."}, {"role": "user", "content": "Hello"}],
        options={"num_predict": 6},
    )
    assert [b.type for b in reply.content] == ["text"]
    assert reply.content[0].text == native["message"]["content"]  # type: ignore[union-attr]
    raw = httpx.post(
        f"{emulator_url}/v1/messages",
        json={"model": MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": "x"}]},
        timeout=10,
    ).json()
    assert "stop_sequence" not in raw and set(raw["usage"]) == {"input_tokens", "output_tokens"}


def test_a_stream_has_ollamas_events(client: anthropic.Anthropic, emulator_url: str) -> None:
    httpx.post(f"{emulator_url}/api/pull", json={"model": "qwen3:0.6b", "stream": False})
    with client.messages.stream(
        model="qwen3:0.6b", max_tokens=5, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.stop_reason == "max_tokens" and final.usage.input_tokens > 0
    body = {"model": MODEL, "max_tokens": 4, "stream": True,
            "messages": [{"role": "user", "content": "Hi"}]}  # fmt: skip
    with httpx.stream("POST", f"{emulator_url}/v1/messages", json=body, timeout=10) as reply:
        assert reply.headers["content-type"] == "text/event-stream"
        events = sse_events(reply.read().decode())
    names = [name for name, _ in events]
    assert names == ["message_start", "content_block_start", *["content_block_delta"] * 4,
                     "content_block_stop", "message_delta", "message_stop"]  # fmt: skip
    start = json.loads(events[0][1])["message"]
    assert "stop_reason" not in start and start["usage"]["output_tokens"] == 0


def test_a_tool_round_trip(client: anthropic.Anthropic, emulator_url: str) -> None:
    asked: Any = [{"role": "user", "content": "Call get_weather for Paris"}]
    first = client.messages.create(model=MODEL, max_tokens=50, tools=TOOLS, messages=asked)
    assert first.stop_reason == "tool_use"
    (call,) = first.content
    assert call.type == "tool_use" and call.name == "get_weather" and call.id.startswith("call_")
    assert call.input == {"city": "Paris"}
    result: Any = {"type": "tool_result", "tool_use_id": call.id, "content": "21 degrees"}
    second = client.messages.create(
        model=MODEL,
        max_tokens=50,
        tools=TOOLS,
        messages=[*asked, {"role": "assistant", "content": first.content},
                  {"role": "user", "content": [result]}],
    )  # fmt: skip
    # the model answers with what the tool gave, and does not call it again
    assert second.stop_reason == "end_turn" and second.content[0].type == "text"
    with client.messages.stream(model=MODEL, max_tokens=50, tools=TOOLS, messages=asked) as s:
        streamed = s.get_final_message()
    assert streamed.content[0].type == "tool_use" and streamed.content[0].input == call.input
    # a JSON object in the request is the call's arguments, as written
    written = 'use get_weather {"city": "Oslo", "days": 2}'
    given = client.messages.create(
        model=MODEL, max_tokens=50, tools=TOOLS, messages=[{"role": "user", "content": written}]
    )
    assert given.content[0].input == {"city": "Oslo", "days": 2}  # type: ignore[union-attr]


def test_thinking_is_relaxed_for_a_model_that_cannot_think(client: anthropic.Anthropic) -> None:
    reply = client.messages.create(
        model=MODEL,
        max_tokens=5,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "Hi"}],
    )
    assert [b.type for b in reply.content] == ["text"]


def test_errors_have_ollamas_anthropic_shape(
    client: anthropic.Anthropic, emulator_url: str
) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(
            model="nope:1b", max_tokens=5, messages=[{"role": "user", "content": "Hi"}]
        )
    assert missing.value.body == {  # type: ignore[comparison-overlap]
        "type": "error",
        "error": {"type": "not_found_error", "message": "model 'nope:1b' not found"},
        "request_id": missing.value.body["request_id"],  # type: ignore[index]
    }
    with pytest.raises(anthropic.NotFoundError) as counting:
        client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
    assert counting.value.response.text == "404 page not found"  # Ollama has no such route
    bad = httpx.post(f"{emulator_url}/v1/messages",
                     json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]})  # fmt: skip
    assert bad.status_code == 400
    assert bad.json()["error"] == {
        "type": "invalid_request_error",
        "message": "max_tokens is required and must be positive",
    }
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    with pytest.raises(anthropic.BadRequestError) as url_image:
        client.messages.create(
            model=MODEL,
            max_tokens=5,
            messages=[{"role": "user", "content": [image]}],  # type: ignore[list-item]
        )
    assert "Only base64 images are supported" in url_image.value.message
    set_faults(emulator_url, fail_next=1, fail_status=503, fail_message="server busy")
    with pytest.raises(anthropic.InternalServerError) as busy:
        client.messages.create(
            model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "Hi"}]
        )
    assert busy.value.status_code == 503
    assert busy.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


def test_a_failure_mid_stream_ends_it_without_a_stop(emulator_url: str) -> None:
    set_faults(emulator_url, fail_after_tokens=2)
    body = {"model": MODEL, "max_tokens": 10, "stream": True,
            "messages": [{"role": "user", "content": "Hi"}]}  # fmt: skip
    with httpx.stream("POST", f"{emulator_url}/v1/messages", json=body, timeout=10) as reply:
        names = [name for name, _ in sse_events(reply.read().decode())]
    assert names == ["message_start", "content_block_start", "content_block_delta",
                     "content_block_delta"]  # fmt: skip
