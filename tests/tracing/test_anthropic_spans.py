"""A `/v1/messages` request is traced like any run: its server span continues the caller's
`traceparent`, the key check and the pool's choice are in it, and the run's GenAI span
(`chat <model>`) says it came through surface `anthropic`."""

from __future__ import annotations

import httpx
import pytest

from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.support.recording_proxy import RecordingProxy
from tests.tracing.test_traces import (
    MODEL,
    Gateway,
    _descends,
    _one,
    _server_span,
    _traceparent,
    traced,  # noqa: F401 - the fixture
)


@pytest.mark.parametrize("traced", [("aiohttp", False)], ids=["aiohttp"], indirect=True)
def test_a_message_is_one_trace_with_its_genai_span(
    traced: tuple[Gateway, OtlpReceiver, RecordingProxy],  # noqa: F811
) -> None:
    gateway, receiver, _ = traced
    trace_id, parent, header = _traceparent()
    reply = httpx.post(
        f"{gateway.url}/v1/messages",
        json={"model": MODEL, "max_tokens": 5, "stream": True,
              "messages": [{"role": "user", "content": "Hi"}]},
        headers={**gateway.headers, "traceparent": header, "anthropic-version": "2023-06-01"},
        timeout=60,
    )  # fmt: skip
    assert reply.status_code == 200 and "event: message_stop" in reply.text, reply.text

    def complete(spans: list[ReceivedSpan]) -> bool:
        names = {s.name for s in spans if s.trace_id == trace_id}
        return {f"chat {MODEL}", "gateway.pool.choose", "gateway.storage.save"} <= names

    trace = [s for s in receiver.wait_for(complete) if s.trace_id == trace_id]
    server = _server_span(trace, "/v1/messages")
    assert server.parent_span_id == parent
    assert _descends(trace, _one(trace, "gateway.auth.key_check").span_id, server)
    run = _one(trace, f"chat {MODEL}")
    assert _descends(trace, run.span_id, server) and run.kind == "client"
    assert run.attributes["gateway.surface"] == "anthropic"
    assert run.attributes["gen_ai.operation.name"] == "chat"
    assert run.attributes["gen_ai.request.model"] == MODEL
    assert run.attributes["gen_ai.usage.output_tokens"] == 5
