"""The emulator continues a trailing assistant message exactly where it stops.

A chat whose last message is the start of the answer its conversation would get is
answered with the rest of that answer, so that a gateway resuming a cut-short stream on
another emulator can check its seam to the character; and a one-turn chat reads like a
generate of its prompt, so that a generate can be continued through the chat form.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from app.emulator.continuation import rest_after

MODEL = "llama3.1:8b"
PROMPT = "tell me about recursion"


@pytest.fixture
def api(emulator_url: str) -> httpx.Client:
    return httpx.Client(base_url=emulator_url, timeout=10)


def streamed(api: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with api.stream("POST", path, json=body) as reply:
        assert reply.status_code == 200, reply.read()
        return [json.loads(line) for line in reply.iter_lines() if line]


def pieces_of(lines: list[dict[str, Any]]) -> list[str]:
    return [
        line["response"] if "response" in line else line["message"]["content"]
        for line in lines
        if not line["done"]
    ]


def chat(api: httpx.Client, messages: list[dict[str, Any]], **extra: Any) -> list[dict[str, Any]]:
    return streamed(api, "/api/chat", {"model": MODEL, "messages": messages, **extra})


def test_rest_after_continues_from_the_character_where_the_text_stops() -> None:
    pieces = ["Okay", ",", " the", " model"]
    assert rest_after(pieces, "") == pieces
    assert rest_after(pieces, "Okay,") == [" the", " model"]
    assert rest_after(pieces, "Okay, th") == ["e", " model"]
    assert rest_after(pieces, "Okay, the model") == []
    assert rest_after(pieces, "Okay; the") is None
    assert rest_after(pieces, "Okay, the model and more") is None


def test_a_one_turn_chat_reads_like_a_generate_of_its_prompt(api: httpx.Client) -> None:
    generated = pieces_of(streamed(api, "/api/generate", {"model": MODEL, "prompt": PROMPT}))
    chatted = pieces_of(chat(api, [{"role": "user", "content": PROMPT}]))
    assert chatted == generated
    body = {"model": MODEL, "prompt": PROMPT, "system": "be brief"}
    with_system = pieces_of(streamed(api, "/api/generate", body))
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": PROMPT}]
    assert pieces_of(chat(api, messages)) == with_system != generated


@pytest.mark.parametrize("cut", [1, 2, 7, 13])
def test_a_trailing_assistant_message_is_continued_exactly(api: httpx.Client, cut: int) -> None:
    """Cut after `cut` pieces, and (for 7) in the middle of the 8th piece: the partial
    message plus the continuation is the undisturbed answer; eval_count counts the
    continuation's pieces."""
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": PROMPT},
    ]
    whole = pieces_of(chat(api, history))
    partial = "".join(whole[:cut])
    if cut == 7:
        partial += whole[7][:2]
    lines = chat(api, [*history, {"role": "assistant", "content": partial}])
    rest = pieces_of(lines)
    assert partial + "".join(rest) == "".join(whole)
    assert rest[1:] == whole[cut + 1 :]
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == len(rest)


def test_a_generate_continues_through_the_chat_form(api: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": PROMPT, "system": "be brief"}
    whole = "".join(pieces_of(streamed(api, "/api/generate", body)))
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": PROMPT},
        {"role": "assistant", "content": whole[:31]},
    ]
    assert whole[:31] + "".join(pieces_of(chat(api, messages))) == whole


def test_the_continuation_keeps_the_limits_as_new_tokens(api: httpx.Client) -> None:
    """`num_predict` counts the continuation's own pieces, as Ollama counts new tokens."""
    whole = pieces_of(chat(api, [{"role": "user", "content": PROMPT}]))
    messages = [
        {"role": "user", "content": PROMPT},
        {"role": "assistant", "content": "".join(whole[:5])},
    ]
    lines = chat(api, messages, options={"num_predict": 4})
    assert pieces_of(lines) == whole[5:9]
    assert lines[-1]["done_reason"] == "length"


def test_a_message_that_is_not_the_answer_s_start_is_an_ordinary_turn(api: httpx.Client) -> None:
    whole = "".join(pieces_of(chat(api, [{"role": "user", "content": PROMPT}])))
    messages = [
        {"role": "user", "content": PROMPT},
        {"role": "assistant", "content": "Something else entirely"},
    ]
    reply = "".join(pieces_of(chat(api, messages)))
    assert reply != whole and not whole.endswith(reply)
    assert len(reply) > 40  # a whole answer of its own, not a tail


def test_a_thinking_model_continues_its_thinking_then_answers(api: httpx.Client) -> None:
    body = {"model": "deepseek-r1:1.5b", "messages": [{"role": "user", "content": PROMPT}]}
    api.post("/api/pull", json={"model": "deepseek-r1:1.5b", "stream": False})
    lines = streamed(api, "/api/chat", body)
    thoughts = [line["message"].get("thinking") or "" for line in lines if not line["done"]]
    assert thoughts[0], "the model did not think"
    partial = {"role": "assistant", "content": "", "thinking": "".join(thoughts[:3])}
    resumed = streamed(api, "/api/chat", {**body, "messages": [*body["messages"], partial]})
    assert [line["message"].get("thinking") or "" for line in resumed if not line["done"]] == [
        *thoughts[3:]
    ]
    assert pieces_of(resumed) == pieces_of(lines)[3:]
