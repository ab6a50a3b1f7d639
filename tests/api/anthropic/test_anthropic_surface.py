"""The Anthropic Messages API at `/v1/messages`: the unmodified `anthropic` SDK, pointed at
a gateway with keys in front of the emulator, on SQLite and on PostgreSQL. Runs go through
the core (the text is what Ollama's `/api/chat` gives for the translated request) and are
stored as surface `anthropic`, under the key that made them."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import pytest

from tests.api.anthropic.conftest import Gateway
from tests.api.conftest import set_faults, sse_events

MODEL = "llama3.1:8b"
THINKER = "qwen3:0.6b"
IMAGE = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8/5+hHgAHggJ/PchI7wAAAABJRU5ErkJggg=="
TOOLS: Any = [
    {
        "name": "get_weather",
        "description": "The weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                         "required": ["city"]},
    }
]  # fmt: skip


def native_chat(emulator: str, messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    body = {"model": MODEL, "messages": messages, "stream": False, **extra}
    reply = httpx.post(f"{emulator}/api/chat", json=body, timeout=10)
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()
    return answer


def test_a_message_and_a_streamed_one(gateway: Gateway, emulator: str) -> None:
    client = gateway.client()
    asked: Any = [{"role": "user", "content": "Tell me about recursion"}]
    reply = client.messages.create(model=MODEL, max_tokens=500, system="Be brief.", messages=asked)
    assert reply.id.startswith("msg_") and reply.type == "message" and reply.role == "assistant"
    assert reply.model == MODEL and reply.stop_reason == "end_turn"
    assert [b.type for b in reply.content] == ["text"]
    text = reply.content[0].text  # type: ignore[union-attr]
    native = native_chat(
        emulator,
        [{"role": "system", "content": "Be brief."}, *asked],
        options={"num_predict": 500},
    )
    assert text == native["message"]["content"]
    assert reply.usage.output_tokens == native["eval_count"] and reply.usage.input_tokens > 0

    with client.messages.stream(
        model=MODEL, max_tokens=500, system="Be brief.", messages=asked
    ) as stream:
        streamed_text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed_text == text and final.content[0].text == text  # type: ignore[union-attr]
    assert (
        final.stop_reason == "end_turn" and final.usage.output_tokens == reply.usage.output_tokens
    )

    # max_tokens reached, plain and streamed
    cut = client.messages.create(model=MODEL, max_tokens=4, messages=asked)
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 4
    with client.messages.stream(model=MODEL, max_tokens=4, messages=asked) as stream:
        assert stream.get_final_message().stop_reason == "max_tokens"

    runs = gateway.stored(surface="anthropic")
    assert len(runs) == 4 and {r["surface"] for r in runs} == {"anthropic"}
    assert {r["principal"] for r in runs} == {"coder"}
    assert sorted(r["kind"] for r in runs) == ["chat", "chat", "stream", "stream"]
    assert all(r["prompt"] == "Tell me about recursion" for r in runs)
    assert gateway.stored(surface="openai") == []


def test_a_tool_round_trip(gateway: Gateway) -> None:
    client = gateway.client()
    asked: Any = [{"role": "user", "content": "Call get_weather for Paris"}]
    first = client.messages.create(model=MODEL, max_tokens=100, tools=TOOLS, messages=asked)
    assert first.stop_reason == "tool_use"
    (call,) = first.content
    assert (
        call.type == "tool_use" and call.name == "get_weather" and call.input == {"city": "Paris"}
    )
    follow_up: Any = [
        *asked,
        {"role": "assistant", "content": [block.model_dump() for block in first.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call.id, "content": "21 degrees, sunny"}]},
    ]  # fmt: skip
    answer = client.messages.create(model=MODEL, max_tokens=100, tools=TOOLS, messages=follow_up)
    assert answer.stop_reason == "end_turn" and answer.content[0].type == "text"
    with client.messages.stream(model=MODEL, max_tokens=100, tools=TOOLS, messages=asked) as s:
        streamed = s.get_final_message()
    assert streamed.stop_reason == "tool_use"
    assert streamed.content[0].type == "tool_use" and streamed.content[0].input == call.input

    runs = {r["metadata"]["kind"] + str(len(r["metadata"]["messages"])): r
            for r in gateway.stored(surface="anthropic")}  # fmt: skip
    sent = runs["chat3"]["metadata"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": {"city": "Paris"},
    }
    assert sent[2] == {"role": "tool", "content": "21 degrees, sunny", "tool_call_id": call.id,
                       "tool_name": "get_weather"}  # fmt: skip


def test_an_image_block(gateway: Gateway) -> None:
    client = gateway.client()
    content: Any = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": IMAGE}},
        {"type": "text", "text": "What is in this picture?"},
    ]
    reply = client.messages.create(
        model=MODEL, max_tokens=50, messages=[{"role": "user", "content": content}]
    )
    assert reply.content[0].type == "text" and reply.content[0].text
    alone = client.messages.create(
        model=MODEL, max_tokens=5, messages=[{"role": "user", "content": content[:1]}]
    )
    assert alone.content[0].type == "text"
    (run, _) = sorted(gateway.stored(surface="anthropic"), key=lambda r: r["created_at"])
    assert run["metadata"]["messages"] == [
        {"role": "user", "content": "What is in this picture?", "images": [IMAGE]}
    ]


def test_thinking(gateway: Gateway) -> None:
    client = gateway.client()
    asked: Any = [{"role": "user", "content": "Why is the sky blue?"}]
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    reply = client.messages.create(model=THINKER, max_tokens=300, thinking=thinking, messages=asked)
    assert [b.type for b in reply.content] == ["thinking", "text"]
    assert reply.content[0].thinking  # type: ignore[union-attr]
    with client.messages.stream(
        model=THINKER, max_tokens=300, thinking=thinking, messages=asked
    ) as stream:
        kinds = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert "thinking_delta" in kinds and "text_delta" in kinds
    assert final.content[0].thinking == reply.content[0].thinking  # type: ignore[union-attr]
    # the thinking goes back in the next turn, as the assistant message's thinking
    client.messages.create(
        model=THINKER, max_tokens=20, thinking=thinking,
        messages=[*asked, {"role": "assistant", "content": [b.model_dump() for b in reply.content]},
                  {"role": "user", "content": "And at sunset?"}],
    )  # fmt: skip
    # a model that cannot think answers anyway (Ollama's relax_thinking)
    relaxed = client.messages.create(model=MODEL, max_tokens=20, thinking=thinking, messages=asked)
    assert [b.type for b in relaxed.content] == ["text"]

    runs = sorted(gateway.stored(surface="anthropic"), key=lambda r: r["created_at"])
    assert len(runs) == 4
    assert runs[0]["metadata"]["request"]["extra"]["think"] is True
    assert runs[0]["metadata"]["thinking"] == reply.content[0].thinking  # type: ignore[union-attr]
    assert runs[2]["metadata"]["messages"][1]["thinking"] == reply.content[0].thinking  # type: ignore[union-attr]
    assert runs[3]["metadata"]["think_relaxed"] is True
    assert "think" not in runs[3]["metadata"]["request"].get("extra", {})


def test_errors_are_the_sdks_own_classes(gateway: Gateway) -> None:
    asked: Any = [{"role": "user", "content": "Hi"}]
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        gateway.client().messages.create(model="qwen2.5:0.5b", max_tokens=5, messages=asked)
    assert refused.value.status_code == 403
    assert refused.value.body["error"]["type"] == "permission_error"  # type: ignore[index]
    assert "qwen2.5:0.5b" in refused.value.message
    with pytest.raises(anthropic.AuthenticationError) as unknown:
        gateway.client("ogw_" + "x" * 40).messages.create(model=MODEL, max_tokens=5, messages=asked)
    assert unknown.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    missing = httpx.post(
        f"{gateway.url}/v1/messages",
        json={"model": MODEL, "max_tokens": 5, "messages": asked},
        headers={"anthropic-version": "2023-06-01"},
    )
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.BadRequestError) as bad:
        gateway.client().messages.create(
            model=MODEL, max_tokens=5, messages=asked, extra_body={"temperature": 3.5}
        )  # this SDK has no sampling parameters; other clients send them
    assert bad.value.body == {  # type: ignore[comparison-overlap]
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "temperature: Input should be less than or equal to 1",
        },
    }
    with pytest.raises(anthropic.BadRequestError) as unknown_block:
        gateway.client().messages.create(
            model=MODEL,
            max_tokens=5,
            messages=[{"role": "user", "content": [{"type": "video"}]}],  # type: ignore[list-item]
        )
    assert "messages.0.content.0.type" in unknown_block.value.message
    with pytest.raises(anthropic.NotFoundError) as not_found:
        gateway.client(gateway.admin).messages.create(model="nope:1b", max_tokens=5, messages=asked)
    assert not_found.value.body["error"]["message"] == "model 'nope:1b' not found"  # type: ignore[index]
    # the bearer token of ANTHROPIC_AUTH_TOKEN is read as well as x-api-key
    by_bearer = anthropic.Anthropic(base_url=gateway.url, auth_token=gateway.user, max_retries=0)
    assert by_bearer.messages.create(model=MODEL, max_tokens=3, messages=asked).content
    failed = [r for r in gateway.stored(surface="anthropic") if not r["success"]]
    assert [r["model_name"] for r in failed] == ["nope:1b"]


def test_a_full_fleet_is_overloaded_529(sqlite_gateway: Gateway, emulator: str) -> None:
    """Ollama's own 503 (`server busy`: its queue is full) on the only backend: Anthropic's
    529 `overloaded_error`, plain and streamed, which its clients retry."""
    client = sqlite_gateway.client()
    asked: Any = [{"role": "user", "content": "Hi"}]
    busy = "server busy, please try again.  maximum pending requests exceeded"
    for stream in (False, True):
        set_faults(emulator, fail_next=1, fail_status=503, fail_message=busy)
        with pytest.raises(anthropic.InternalServerError) as raised:
            client.messages.create(model=MODEL, max_tokens=5, messages=asked, stream=stream)
        assert raised.value.status_code == 529, raised.value.response.text
        assert raised.value.body["error"] == {"type": "overloaded_error", "message": busy}  # type: ignore[index]


def test_the_raw_stream_has_anthropics_events(sqlite_gateway: Gateway) -> None:
    body = {"model": THINKER, "max_tokens": 200, "stream": True,
            "messages": [{"role": "user", "content": "Hi"}]}  # fmt: skip
    headers = {"x-api-key": sqlite_gateway.user, "anthropic-version": "2023-06-01",
               "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14"}  # fmt: skip
    with httpx.stream(
        "POST", f"{sqlite_gateway.url}/v1/messages?beta=true", json=body, headers=headers
    ) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = [(name, json.loads(data)) for name, data in sse_events(reply.read().decode())]
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(data["type"] == name for name, data in events)
    blocks = [d["content_block"]["type"] for n, d in events if n == "content_block_start"]
    assert blocks == ["thinking", "text"]
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["input_tokens"] > 0 and delta["usage"]["output_tokens"] > 0


def test_models_in_anthropics_shape_when_asked_with_anthropic_version(
    sqlite_gateway: Gateway,
) -> None:
    client = sqlite_gateway.client()
    assert sorted(m.id for m in client.models.list()) == sorted(["llama3.1:8b", "qwen3:0.6b"])
    page = client.models.list(limit=1)
    assert len(page.data) == 1 and page.has_more and page.data[0].type == "model"
    rest = client.models.list(limit=5, after_id=page.data[0].id)
    assert len(rest.data) == 1 and not rest.has_more and rest.data[0].id != page.data[0].id
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL and model.display_name == MODEL and model.created_at.year > 2000
    with pytest.raises(anthropic.PermissionDeniedError):
        client.models.retrieve("qwen2.5:0.5b")
    # without anthropic-version the path is OpenAI's, errors included
    auth = {"Authorization": f"Bearer {sqlite_gateway.user}"}
    openai_list = httpx.get(f"{sqlite_gateway.url}/v1/models", headers=auth).json()
    assert openai_list["object"] == "list" and openai_list["data"][0]["object"] == "model"
    assert "error" in httpx.get(f"{sqlite_gateway.url}/v1/models").json()
    anthropic_401 = httpx.get(
        f"{sqlite_gateway.url}/v1/models", headers={"anthropic-version": "2023-06-01"}
    ).json()
    assert anthropic_401["type"] == "error"
    assert anthropic_401["error"]["type"] == "authentication_error"


def test_count_tokens(sqlite_gateway: Gateway) -> None:
    client = sqlite_gateway.client()
    small = client.messages.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": "foo"}]
    ).input_tokens
    large = client.messages.count_tokens(
        model=MODEL, system="Be brief. " * 100, tools=TOOLS,
        messages=[{"role": "user", "content": "foo " * 400}],
    ).input_tokens  # fmt: skip
    assert small == 1 and large > 500
    with pytest.raises(anthropic.PermissionDeniedError):
        client.messages.count_tokens(
            model="qwen2.5:0.5b", messages=[{"role": "user", "content": "foo"}]
        )
    assert sqlite_gateway.stored() == []  # counting runs nothing


def test_refusals_at_the_edge_have_anthropics_shape(emulator: str, tmp_path: Any) -> None:
    from tests.api.anthropic.conftest import keyed_gateway

    url = f"sqlite+aiosqlite:///{tmp_path}/edge.db"
    with keyed_gateway([emulator], url, tmp_path, max_body_bytes=4096) as gateway:
        headers = {"x-api-key": gateway.user, "anthropic-version": "2023-06-01"}

        def post(content: bytes) -> httpx.Response:
            return httpx.post(f"{gateway.url}/v1/messages", content=content,
                              headers={**headers, "content-type": "application/json"})  # fmt: skip

        too_large = post(json.dumps({"model": MODEL, "max_tokens": 5, "messages": [
            {"role": "user", "content": "x" * 5000}]}).encode())  # fmt: skip
        assert too_large.status_code == 413
        assert too_large.json()["error"]["type"] == "request_too_large"
        deep = post(b'{"model": "m", "max_tokens": 5, "messages": ' + b"[" * 70 + b"]" * 70 + b"}")
        assert deep.status_code == 400 and "nests deeper" in deep.json()["error"]["message"]
        nul = post(b'{"model": "m", "max_tokens": 5, "messages": [{"role": "user", '
                   b'"content": "a\\u0000b"}]}')  # fmt: skip
        assert nul.status_code == 400
        assert nul.json()["error"]["message"].startswith("messages.0.content: contains a NUL")
        not_json = post(b"{oops")
        assert not_json.status_code == 400
        assert not_json.json()["error"]["type"] == "invalid_request_error"
        assert gateway.stored() == []


def test_limits_audit_and_metrics_see_the_surface(sqlite_gateway: Gateway) -> None:
    """A key's rate limit is Anthropic's `rate_limit_error` (429, `retry-after`); each call
    has its audit entry (surface `anthropic`, the model as target, no prompt); the run is
    counted in `/metrics` under surface `anthropic`."""
    admin = {"Authorization": f"Bearer {sqlite_gateway.admin}"}
    created = httpx.post(
        f"{sqlite_gateway.url}/gateway/keys",
        json={"name": "limited", "scope": "user", "requests_per_minute": 1},
        headers=admin,
    ).json()
    client = sqlite_gateway.client(created["key"])
    secret = "my secret prompt 4417"
    client.messages.create(
        model=MODEL, max_tokens=3, messages=[{"role": "user", "content": secret}]
    )
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.create(
            model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "x"}]
        )
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert int(limited.value.response.headers["retry-after"]) > 0
    entries = httpx.get(
        f"{sqlite_gateway.url}/gateway/audit", params={"surface": "anthropic"}, headers=admin
    ).json()["items"]
    assert secret not in str(entries)
    outcomes = sorted((e["actor"], e["action"], e["outcome"], e["status"]) for e in entries)
    assert outcomes == [
        ("limited", "POST /v1/messages", "allowed", 200),
        ("limited", "POST /v1/messages", "denied", 429),
    ]
    assert {e["target"] for e in entries if e["outcome"] == "allowed"} == {MODEL}
    metrics = httpx.get(f"{sqlite_gateway.url}/metrics", headers=admin).text
    assert (
        'gateway_runs_total{model="llama3.1:8b",outcome="succeeded",surface="anthropic"} 1.0'
        in (metrics)
    ), [line for line in metrics.splitlines() if line.startswith("gateway_runs_total")]


def test_a_silent_backend_gets_pings_in_the_stream(
    sqlite_gateway: Gateway, emulator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the backend says nothing (a model loading, a long prompt read), the stream
    sends a `ping` every `PING_SECONDS` (10 s; 0.2 s here), so that no client or proxy
    takes the quiet stream for a dead one; then the answer comes as usual."""
    from app.api.anthropic import routes

    monkeypatch.setattr(routes, "PING_SECONDS", 0.2)
    set_faults(emulator, first_token_delay_ms=1500)
    body = {"model": MODEL, "max_tokens": 3, "stream": True,
            "messages": [{"role": "user", "content": "Hi"}]}  # fmt: skip
    headers = {"x-api-key": sqlite_gateway.user}
    with httpx.stream(
        "POST", f"{sqlite_gateway.url}/v1/messages", json=body, headers=headers, timeout=30
    ) as reply:
        names = [name for name, _ in sse_events(reply.read().decode())]
    first_block = names.index("content_block_start")
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert names[1:first_block] == ["ping"] * (first_block - 1) and first_block >= 4, names
