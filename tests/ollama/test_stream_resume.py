"""What a cut-short stream's continuation asks for, and when there is none."""

from __future__ import annotations

from typing import Any

import pytest

from app.ollama.run_spec import StreamAccumulator
from app.ollama.stream_resume import StreamResume, continuation_body, resume_refusal
from app.relay.resume import line_as


def partial(*pieces: str, thinking: str = "") -> StreamAccumulator:
    acc = StreamAccumulator(on_chunk=lambda chunk: None)
    if thinking:
        acc.feed("", thinking)
    for piece in pieces:
        acc.feed(piece)
    return acc


def test_a_chat_continues_with_its_partial_answer_as_the_last_message() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "options": {"temperature": 0, "num_predict": 10},
        "keep_alive": "5m",
        "tools": [{"type": "function"}],
        "stream": True,
    }
    continued = continuation_body("chat", body, partial("Hel", "lo", thinking="hmm"))
    assert continued == {
        "model": "m",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello", "thinking": "hmm"},
        ],
        "options": {"temperature": 0, "num_predict": 7},  # 3 pieces were taken
        "keep_alive": "5m",
        "tools": [{"type": "function"}],
    }
    assert body["messages"] == [{"role": "user", "content": "hi"}]  # not changed


def test_a_generate_continues_through_the_chat_form() -> None:
    body = {"model": "m", "prompt": "P", "system": "S", "options": {"seed": 3}, "think": False}
    assert continuation_body("generate", body, partial("A", "B")) == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "P"},
            {"role": "assistant", "content": "AB"},
        ],
        "options": {"seed": 3},
        "think": False,
    }
    no_system = continuation_body("generate", {"model": "m", "prompt": "P"}, partial("A"))
    assert no_system is not None and [m["role"] for m in no_system["messages"]] == [
        "user",
        "assistant",
    ]


def test_an_answer_at_its_token_limit_has_nothing_to_continue() -> None:
    body: dict[str, Any] = {"model": "m", "prompt": "P", "options": {"num_predict": 2}}
    assert continuation_body("generate", body, partial("A", "B")) is None
    body["options"]["num_predict"] = -1  # no limit
    assert continuation_body("generate", body, partial("A", "B")) is not None


@pytest.mark.parametrize(
    ("kind", "body", "why"),
    [
        ("generate", {"prompt": "P", "images": ["aGk="]}, "images"),
        ("generate", {"prompt": "P", "raw": True}, "raw"),
        ("generate", {"prompt": "P", "suffix": "end"}, "suffix"),
        ("generate", {"prompt": "P", "template": "{{ .Prompt }}"}, "template"),
        ("generate", {"prompt": "P", "context": [1, 2]}, "context"),
        ("generate", {"prompt": "P", "format": "json"}, "format"),
        ("chat", {"messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}, "images"),
        ("chat", {"messages": [], "format": {"type": "object"}}, "format"),
    ],
)
def test_what_cannot_be_continued(kind: Any, body: dict[str, Any], why: str) -> None:
    refusal = resume_refusal(kind, body, partial("A"))
    assert refusal is not None and why in refusal
    plain = {"prompt": "P"} if kind == "generate" else {"messages": [{"role": "user"}]}
    assert resume_refusal(kind, plain, partial("A")) is None


def test_tool_calls_already_received_are_not_continued() -> None:
    acc = partial("A")
    acc.feed_ollama_chunk(
        "chat", {"message": {"role": "assistant", "content": "", "tool_calls": [{}]}}
    )
    assert resume_refusal("chat", {"messages": []}, acc) == "tool calls were already received"


def test_the_counters_of_a_resumed_answer_add_up() -> None:
    from app.backends.errors import StreamInterrupted

    acc = partial()
    resume = StreamResume(acc)
    resume.begin("http://a")
    for piece in ("A", "B", "C"):
        acc.feed(piece)
        resume.observe()
    resume.cut(StreamInterrupted("cut"))
    resume.begin("http://b")
    acc.feed("D")
    resume.observe()
    resume.finished()
    final = resume.merged_final({"done": True, "eval_count": 1, "eval_duration": 10})
    assert final["eval_count"] == 4 and final["eval_duration"] >= 10
    assert resume.metadata() == {
        "resumed": True,
        "backends": ["http://a", "http://b"],
        "resumes": [
            {
                "backend": "http://a",
                "error": "cut",
                "after_tokens": 3,
                "after_chars": 3,
                "pause": resume.seams[0]["pause"],
            }
        ],
    }
    pause = resume.seams[0]["pause"]
    assert pause is not None and pause >= 0


def test_a_chat_line_in_the_shape_of_a_generate_line() -> None:
    chunk = {
        "model": "m",
        "created_at": "t",
        "message": {"role": "assistant", "content": "Hi", "thinking": "hm"},
        "done": False,
    }
    assert line_as("generate", chunk) == {
        "model": "m",
        "created_at": "t",
        "response": "Hi",
        "thinking": "hm",
        "done": False,
    }
    assert line_as("chat", chunk) == chunk
    final = {"model": "m", "message": {"role": "assistant", "content": ""}, "done": True,
             "done_reason": "stop", "eval_count": 9}  # fmt: skip
    assert list(line_as("generate", final)) == [
        "model",
        "response",
        "done",
        "done_reason",
        "eval_count",
    ]
