"""The emulator answers OpenAI's Responses API as Ollama does (`/v1/responses`, stateless),
so a project's own tests can point the `openai` SDK at it as they would at Ollama."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
import zstandard

TOOL: Any = [
    {"type": "function", "name": "get_weather",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                    "required": ["city"]}},
    {"type": "namespace", "name": "agents", "tools": [
        {"type": "function", "name": "close_agent",
         "parameters": {"type": "object", "properties": {"target": {"type": "string"}}}}]},
    {"type": "web_search"},
]  # fmt: skip


@pytest.fixture
def client(emulator_url: str) -> openai.OpenAI:
    httpx.post(f"{emulator_url}/api/pull", json={"model": "qwen3:0.6b", "stream": False})
    return openai.OpenAI(base_url=f"{emulator_url}/v1", api_key="ollama", max_retries=0)


def test_a_response_is_the_chats_answer_and_nothing_is_kept(
    client: openai.OpenAI, emulator_url: str
) -> None:
    reply = client.responses.create(
        model="llama3.1:8b", instructions="Be brief.", input="Hello",
        max_output_tokens=5, previous_response_id="resp_123", store=True, metadata={"a": "b"},
    )  # fmt: skip
    chat = httpx.post(f"{emulator_url}/api/chat", timeout=10, json={
        "model": "llama3.1:8b", "stream": False,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        "options": {"temperature": 1.0, "num_predict": 5}}).json()  # fmt: skip
    assert reply.output_text == chat["message"]["content"]
    # Ollama's: stateless, and "completed" even when max_output_tokens cut the answer
    assert reply.status == "completed" and reply.incomplete_details is None
    assert reply.store is False and reply.previous_response_id is None and reply.metadata == {}
    assert reply.usage is not None and reply.usage.output_tokens == 5
    assert reply.temperature == 1.0 and reply.id.startswith("resp_")


def test_the_stream_is_ollamas_and_the_sdk_reads_it(client: openai.OpenAI) -> None:
    events = list(client.responses.create(
        model="qwen3:0.6b", input="Why?", reasoning={"effort": "low"}, stream=True
    ))  # fmt: skip
    kinds = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert "response.reasoning_summary_text.delta" in kinds
    assert "response.reasoning_summary_part.added" not in kinds  # as Ollama: no summary parts
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]  # fmt: skip
    final = events[-1].response  # type: ignore[union-attr]
    reasoning, message = final.output
    assert reasoning.encrypted_content == reasoning.summary[0].text  # type: ignore[union-attr]
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == message.content[0].text  # type: ignore[union-attr]


def test_tools_namespaces_and_a_tool_round_trip(client: openai.OpenAI) -> None:
    reply = client.responses.create(model="llama3.1:8b", input="Call get_weather for Lima",
                                    tools=TOOL)  # fmt: skip
    [call] = reply.output
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Lima"}
    ns = client.responses.create(model="llama3.1:8b", input="use agents.close_agent", tools=TOOL)
    assert ns.output[0].name == "agents.close_agent"  # type: ignore[union-attr]  # not split back
    answered = client.responses.create(model="llama3.1:8b", tools=TOOL, input=[
        {"role": "user", "content": "Call get_weather for Lima"},
        call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
    ])  # fmt: skip
    assert answered.output[0].type == "message" and answered.output_text


def test_zstd_bodies_and_errors_in_openais_shape(emulator_url: str) -> None:
    body = json.dumps({"model": "llama3.1:8b", "input": "hi"}).encode()
    reply = httpx.post(
        f"{emulator_url}/v1/responses", content=zstandard.ZstdCompressor().compress(body),
        headers={"content-encoding": "zstd", "content-type": "application/json"}, timeout=10,
    )  # fmt: skip
    assert reply.status_code == 200 and reply.json()["status"] == "completed"
    cases = [
        ({"model": "nope:1b", "input": "x"}, 404, "not_found_error", "model 'nope:1b' not found"),
        ({"model": "llama3.1:8b", "input": [{"type": "item_reference", "id": "x"}]}, 400,
         "invalid_request_error", 'input[0]: unknown input item type: "item_reference"'),
        ({"model": "llama3.1:8b", "input": "x", "reasoning": {"effort": "huge"}}, 400,
         "invalid_request_error", 'invalid reasoning value: "huge"'),
        ({"model": "llama3.1:8b", "input": "x", "reasoning": {"effort": "low"}}, 400,
         "invalid_request_error", '"llama3.1:8b" does not support thinking'),
    ]  # fmt: skip
    for request, status, kind, says in cases:
        got = httpx.post(f"{emulator_url}/v1/responses", json=request, timeout=10)
        assert got.status_code == status, got.text
        error = got.json()["error"]
        assert error["type"] == kind and error["message"].startswith(says), error
        assert error["param"] is None and error["code"] is None
    bad = httpx.post(f"{emulator_url}/v1/responses", content=b"not zstd at all",
                     headers={"content-encoding": "zstd"}, timeout=10)  # fmt: skip
    assert bad.status_code == 400
    assert bad.json()["error"]["message"] == "failed to decompress zstd body"
