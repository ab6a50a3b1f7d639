"""`/v1/responses` through the unmodified `openai` SDK, on SQLite and PostgreSQL: responses
plain and streamed, tools, structured output, limits, stored responses continued, listed,
read and deleted, keys and their errors; every run stored as surface `responses`."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from app.api.openai.responses.thinking import decode_thinking
from tests.api.openai.responses.conftest import ADMIN_KEY, MODEL, THINKER, Gateway

WEATHER: Any = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]


def native_chat(emulator_url: str, model: str, messages: list[dict[str, Any]], **extra: Any) -> Any:
    body = {"model": model, "messages": messages, "stream": False, **extra}
    reply = httpx.post(f"{emulator_url}/api/chat", json=body, timeout=10)
    reply.raise_for_status()
    return reply.json()


def test_a_response_plain_streamed_and_read_back(gateway: Gateway, emulator_url: str) -> None:
    asked: Any = {"model": MODEL, "instructions": "Be brief.", "temperature": 0.5,
                  "input": "Tell me about recursion"}  # fmt: skip
    plain = gateway.user.responses.create(**asked)
    assert plain.object == "response" and plain.id.startswith("resp_")
    assert plain.status == "completed" and plain.model == MODEL and plain.store is True
    assert plain.instructions == "Be brief." and plain.temperature == 0.5
    [message] = plain.output
    assert message.type == "message" and message.role == "assistant"
    native = native_chat(
        emulator_url, MODEL,
        [{"role": "system", "content": "Be brief."},
         {"role": "user", "content": "Tell me about recursion"}],
        options={"temperature": 0.5},
    )  # fmt: skip
    assert plain.output_text == native["message"]["content"] and plain.output_text
    assert plain.usage is not None and plain.usage.output_tokens == native["eval_count"]
    assert plain.usage.total_tokens == plain.usage.input_tokens + plain.usage.output_tokens

    events = list(gateway.user.responses.create(**asked, stream=True))
    kinds = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = kinds.count("response.output_text.delta")
    assert deltas > 3 and kinds == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", *["response.output_text.delta"] * deltas,
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response  # type: ignore[union-attr]
    assert text == final.output_text == plain.output_text
    assert events[0].response.status == "in_progress" and final.status == "completed"  # type: ignore[union-attr]
    assert final.id == events[0].response.id != plain.id  # type: ignore[union-attr]

    with gateway.user.responses.stream(**asked) as stream:
        helped = stream.get_final_response()
    assert helped.output_text == plain.output_text

    again = gateway.user.responses.retrieve(plain.id)
    assert again.output_text == plain.output_text and again.status == "completed"
    assert again.output[0].id == plain.output[0].id and again.usage == plain.usage
    runs = [r for r in gateway.stored_runs() if r["surface"] == "responses"]
    assert len(runs) == 3 and {r["principal"] for r in runs} == {"alice"}
    by_response = {r["metadata"]["response_id"]: r for r in runs}
    assert by_response[plain.id]["response"] == plain.output_text
    assert by_response[final.id]["metadata"]["request"]["stream"] is True


def test_thinking_is_a_reasoning_item_whose_content_gives_it_back(
    gateway: Gateway, emulator_url: str
) -> None:
    reply = gateway.user.responses.create(
        model=THINKER, input="Why is the sky blue?", reasoning={"effort": "high"}
    )
    reasoning, message = reply.output
    assert reasoning.type == "reasoning" and message.type == "message"
    native = native_chat(emulator_url, THINKER, [{"role": "user", "content": "Why is the sky blue?"}],
                         think="high")  # fmt: skip
    thinking = native["message"]["thinking"]
    assert reasoning.summary[0].text == thinking  # type: ignore[union-attr]
    assert reasoning.encrypted_content != thinking  # type: ignore[union-attr]
    assert decode_thinking(reasoning.encrypted_content or "") == thinking  # type: ignore[union-attr]
    events = list(gateway.user.responses.create(
        model=THINKER, input="Why is the sky blue?", reasoning={"effort": "high"}, stream=True
    ))  # fmt: skip
    kinds = [e.type for e in events]
    assert kinds[2:4] == ["response.output_item.added", "response.reasoning_summary_part.added"]
    summary = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    assert summary == thinking
    done = [e.item for e in events if e.type == "response.output_item.done"]
    assert [i.type for i in done] == ["reasoning", "message"]
    assert [i.id for i in done] == [i.id for i in events[-1].response.output]  # type: ignore[union-attr]


def test_a_function_call_round_trip(gateway: Gateway) -> None:
    first = gateway.user.responses.create(
        model=MODEL, input="Call get_weather for Paris", tools=WEATHER
    )
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"} and call.call_id
    assert first.output_text == ""
    result = {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp": 21}'}
    # the whole history sent again, as Codex does ...
    history: Any = [
        {"role": "user", "content": "Call get_weather for Paris"},
        call.model_dump(exclude_none=True),
        result,
    ]
    answered = gateway.user.responses.create(model=MODEL, input=history, tools=WEATHER, store=False)
    [message] = answered.output
    assert message.type == "message" and answered.output_text
    # ... and the same turn as a continuation of the stored response: the same answer
    continued = gateway.user.responses.create(
        model=MODEL, input=[result], tools=WEATHER, previous_response_id=first.id
    )
    assert continued.previous_response_id == first.id
    assert continued.output_text == answered.output_text
    listed = gateway.user.responses.input_items.list(continued.id, order="asc")
    assert [i.type for i in listed.data] == ["message", "function_call", "function_call_output"]
    assert listed.data[1].call_id == call.call_id  # type: ignore[union-attr]
    # the continued run keeps its own turn only: the rest is the stored response's
    runs = {r["metadata"]["response_id"]: r for r in gateway.stored_runs()}
    stored = runs[continued.id]
    assert stored["metadata"]["previous_response_id"] == first.id
    assert [m["role"] for m in stored["metadata"]["messages"]] == ["tool"]
    assert [m["role"] for m in runs[answered.id]["metadata"]["messages"]] == [
        "user", "assistant", "tool",
    ]  # fmt: skip
    # a streamed tool call: its item, then its arguments in one delta
    events = list(gateway.user.responses.create(
        model=MODEL, input="Call get_weather for Oslo", tools=WEATHER, stream=True
    ))  # fmt: skip
    kinds = [e.type for e in events]
    assert kinds[2:] == [
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    assert json.loads(events[-2].item.arguments) == {"city": "Oslo"}  # type: ignore[union-attr]


def test_json_schema_output_and_max_output_tokens(gateway: Gateway) -> None:
    schema = {"type": "object", "properties": {"title": {"type": "string"},
              "year": {"type": "integer"}}, "required": ["title", "year"]}  # fmt: skip
    reply = gateway.user.responses.create(
        model=MODEL, input="A film, as JSON",
        text={"format": {"type": "json_schema", "name": "film", "schema": schema, "strict": True}},
    )  # fmt: skip
    film = json.loads(reply.output_text)
    assert isinstance(film["title"], str) and isinstance(film["year"], int)
    assert reply.text is not None and reply.text.format.type == "json_schema"  # type: ignore[union-attr]
    plain_json = gateway.user.responses.create(
        model=MODEL, input="Some JSON", text={"format": {"type": "json_object"}}
    )
    assert isinstance(json.loads(plain_json.output_text), dict)

    cut = gateway.user.responses.create(model=MODEL, input="Tell me a story", max_output_tokens=5)
    assert cut.status == "incomplete" and cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"
    assert cut.usage is not None and cut.usage.output_tokens == 5 and cut.output_text
    assert cut.output[0].status == "incomplete"  # type: ignore[union-attr]
    events = list(gateway.user.responses.create(
        model=MODEL, input="Tell me a story", max_output_tokens=5, stream=True
    ))  # fmt: skip
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"  # type: ignore[union-attr]
    assert gateway.user.responses.retrieve(cut.id).status == "incomplete"


def test_stored_responses_are_continued_listed_deleted_and_kept_to_their_key(
    gateway: Gateway,
) -> None:
    one = gateway.user.responses.create(model=MODEL, input="First question", metadata={"k": "v"})
    two = gateway.user.responses.create(model=MODEL, input="Second", previous_response_id=one.id)
    three = gateway.user.responses.create(
        model=MODEL, input=[{"role": "user", "content": "Third"}], previous_response_id=two.id
    )
    assert one.metadata == {"k": "v"} and three.previous_response_id == two.id
    # what the third was made from: every turn before it, then its own input
    listed = gateway.user.responses.input_items.list(three.id, order="asc", limit=100)
    texts = [i.content[0].text for i in listed.data]  # type: ignore[union-attr]
    assert texts == ["First question", one.output_text, "Second", two.output_text, "Third"]
    assert listed.has_more is False and listed.first_id == listed.data[0].id
    newest = gateway.user.responses.input_items.list(three.id, limit=2)
    assert [i.content[0].text for i in newest.data] == ["Third", two.output_text]  # type: ignore[union-attr]
    assert newest.has_more is True and newest.last_id == newest.data[-1].id
    rest = gateway.user.responses.input_items.list(three.id, limit=2, after=newest.last_id or "")
    assert [i.content[0].text for i in rest.data] == ["Second", one.output_text]  # type: ignore[union-attr]
    # the same conversation sent whole gives the same answer: the stored one was used
    whole = gateway.user.responses.create(
        model=MODEL, store=False,
        input=[{"role": "user", "content": "First question"},
               {"role": "assistant", "content": one.output_text},
               {"role": "user", "content": "Second"},
               {"role": "assistant", "content": two.output_text},
               {"role": "user", "content": "Third"}],
    )  # fmt: skip
    assert whole.output_text == three.output_text and whole.store is False

    # store: false keeps it out: it cannot be read or continued, and the error names it
    with pytest.raises(openai.NotFoundError, match=whole.id):
        gateway.user.responses.retrieve(whole.id)
    with pytest.raises(openai.NotFoundError, match=whole.id) as refused:
        gateway.user.responses.create(model=MODEL, input="more", previous_response_id=whole.id)
    assert "store: false" in str(refused.value)

    # another user key sees none of it; an admin sees it
    for attempt in (
        lambda: gateway.other.responses.retrieve(two.id),
        lambda: gateway.other.responses.input_items.list(two.id),
        lambda: gateway.other.responses.delete(two.id),
        lambda: gateway.other.responses.create(model=MODEL, input="x", previous_response_id=two.id),
    ):
        with pytest.raises(openai.NotFoundError):
            attempt()
    assert gateway.admin.responses.retrieve(two.id).output_text == two.output_text

    # deleted: gone, and what continued it cannot be continued any more
    gateway.user.responses.delete(two.id)
    with pytest.raises(openai.NotFoundError):
        gateway.user.responses.retrieve(two.id)
    with pytest.raises(openai.NotFoundError, match=two.id):
        gateway.user.responses.create(model=MODEL, input="x", previous_response_id=three.id)
    assert gateway.user.responses.retrieve(one.id).status == "completed"
    # a response is its run: deleting the run (retention, an admin) deletes the response
    (run_of_one,) = [r for r in gateway.stored_runs() if r["metadata"]["response_id"] == one.id]
    deleted = httpx.delete(f"{gateway.url}/gateway/results/{run_of_one['id']}", timeout=10,
                           headers={"Authorization": f"Bearer {ADMIN_KEY}"})  # fmt: skip
    assert deleted.status_code == 204
    with pytest.raises(openai.NotFoundError):
        gateway.user.responses.retrieve(one.id)
    # the runs stay stored (their own turn each), filed under surface responses
    runs = [r for r in gateway.stored_runs() if r["surface"] == "responses"]
    assert len(runs) == 3
    assert all(len(r["metadata"]["messages"]) == 1 for r in runs if r["metadata"].get(
        "previous_response_id"))  # fmt: skip


def test_errors_are_the_sdks_own(gateway: Gateway, emulator_url: str) -> None:
    with pytest.raises(openai.PermissionDeniedError, match=re.escape("qwen2.5:0.5b")):
        gateway.user.responses.create(model="qwen2.5:0.5b", input="hi")
    nobody = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="ogw_not_a_key_at_all_000000000",
                           max_retries=0)  # fmt: skip
    with pytest.raises(openai.AuthenticationError):
        nobody.responses.create(model=MODEL, input="hi")
    keyless = httpx.post(f"{gateway.url}/v1/responses", json={"model": MODEL, "input": "hi"})
    assert keyless.status_code == 401 and keyless.json()["error"]["type"] == "authentication_error"
    bad: list[tuple[dict[str, Any], str]] = [
        ({"temperature": 5}, "temperature"),
        ({"input": [{"type": "bogus_item"}]}, 'input[0]: unknown input item type: "bogus_item"'),
        ({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]},
         "input[0].content[0]: unknown content type: input_audio"),
        ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
         "input[0].call_id is required"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{"}]},
         "input[0].arguments is not valid JSON"),
        ({"input": []}, "input"),
        ({"reasoning": {"effort": "enormous"}}, "invalid reasoning value"),
        ({"input": [{"role": "user", "content": [{"type": "input_image",
                                                  "image_url": "https://x/y.png"}]}]},
         "image URLs are not currently supported"),
    ]  # fmt: skip
    for fields, says in bad:
        body: Any = {"model": MODEL, "input": "hi", **fields}
        with pytest.raises(openai.BadRequestError) as error:
            gateway.user.responses.create(**body)
        assert says in str(error.value), (fields, str(error.value))
        assert error.value.status_code == 400
    missing = gateway.user.responses.with_raw_response
    with pytest.raises(openai.NotFoundError, match="resp_nope"):
        missing.retrieve("resp_nope")
    # the model the backend does not have: its 404 in OpenAI's shape
    with pytest.raises(openai.NotFoundError):
        gateway.admin.responses.create(model="nope:1b", input="hi")
    # the audit log files them under their own surface
    denied = gateway.admin_get("/gateway/audit", surface="responses", outcome="denied")["items"]
    assert {(e["actor"], e["status"]) for e in denied} >= {("alice", 403), ("anonymous", 401)}
    assert {e["action"] for e in denied} == {"POST /v1/responses"}


def test_concurrent_stored_responses_are_each_committed_before_their_reply(
    gateway: Gateway,
) -> None:
    """Stored responses saved at the same time share a transaction: each is readable and
    can be continued the moment its reply arrives, whichever batch it went in."""

    def turn(i: int) -> tuple[str, str, str, str]:
        first = gateway.user.responses.create(model=MODEL, input=f"question {i}")
        read = gateway.user.responses.retrieve(first.id)  # at once: committed before the reply
        second = gateway.user.responses.create(
            model=MODEL, input=f"and then {i}?", previous_response_id=first.id
        )
        return first.id, first.output_text, read.output_text, second.id

    with ThreadPoolExecutor(max_workers=16) as pool:
        turns = list(pool.map(turn, range(24)))
    assert len({first for first, _, _, _ in turns}) == 24
    for first, text, read, second in turns:
        assert text and read == text
        chained = gateway.user.responses.input_items.list(second)
        said = json.dumps([item.model_dump() for item in chained.data])
        assert second != first and "question" in said  # the chain reaches the first turn
