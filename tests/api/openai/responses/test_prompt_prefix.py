"""A Codex session's prompt grows by appending: the messages translated for turn N are a
prefix of those of turn N+1 (item ids ignored, developer messages kept in place, thinking
given back exactly), so a backend's prompt cache evaluates only what a turn adds."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.api.openai.responses.output import Answer, layout, output_items
from app.api.openai.responses.request import ResponsesRequest
from app.api.openai.responses.thinking import decode_thinking, encode_thinking
from app.api.openai.responses.translate import REMINDER, conversation, tools_of
from app.main import create_app
from tests.api.conftest import gateway_settings
from tests.support.servers import serving_in_thread

BASE = "You are a coding agent running in the Codex CLI. " + " ".join(
    f"Rule {i}: keep the change small and say what you did." for i in range(150)
)


def message(role: str, text: str, item_id: str) -> dict[str, Any]:
    kind = "output_text" if role == "assistant" else "input_text"
    return {"type": "message", "id": item_id, "role": role,
            "content": [{"type": kind, "text": text}]}  # fmt: skip


TOOLS: list[dict[str, Any]] = [
    {"type": "function", "name": "exec_command", "strict": False,
     "description": "Runs a command in a PTY.",
     "parameters": {"type": "object", "properties": {"cmd": {"type": "string"},
                    "workdir": {"type": "string"}}, "required": ["cmd"],
                    "additionalProperties": False}},
    {"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents.",
     "tools": [{"type": "function", "name": "close_agent", "strict": False,
                "parameters": {"type": "object", "properties": {"target": {"type": "string"}},
                               "required": ["target"]}}]},
    {"type": "web_search", "external_web_access": True},
]  # fmt: skip


def turn_one() -> list[dict[str, Any]]:
    """Codex's first request: base instructions and skills as developer messages, the
    environment and the prompt as user messages."""
    return [
        message("developer", BASE, "msg_5fae3806"),
        message("developer", "<skills_instructions>\n## Skills\nnone\n</skills_instructions>",
                "msg_01a241b2-b4a8"),
        message("user", "<environment_context>\n  <cwd>/tmp/w</cwd>\n</environment_context>",
                "msg_01a241b2-b4a9"),
        message("user", "Run exec_command `ls -la` please", "msg_01a241b2-b4b0"),
    ]  # fmt: skip


def reply_one(thinking: str) -> list[dict[str, Any]]:
    """What the gateway answered to turn one (echoed by Codex in turn two)."""
    return [
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "x"}],
         "encrypted_content": encode_thinking(thinking)},
        message("assistant", "I'll run it.", "msg_a255"),
        {"type": "function_call", "status": "completed", "id": "fc_a301", "name": "exec_command",
         "arguments": '{"cmd":"ls -la"}', "call_id": "call_e668"},
        {"type": "function_call", "status": "completed", "id": "fc_a302", "name": "close_agent",
         "namespace": "multi_agent_v1", "arguments": '{"target":"a1"}', "call_id": "call_e669"},
    ]  # fmt: skip


def turn_two(thinking: str) -> list[dict[str, Any]]:
    return [
        *turn_one(),
        *reply_one(thinking),
        {"type": "function_call_output", "id": "fco_1", "call_id": "call_e668",
         "output": "Process exited with code 0\nOutput:\ntotal 0\n"},
        {"type": "function_call_output", "id": "fco_2", "call_id": "call_e669",
         "output": "closed"},
        message("developer", "<permissions instructions>sandbox: read-only</permissions instructions>",
                "msg_perm"),
        message("user", "and now say bye", "msg_bye"),
    ]  # fmt: skip


def test_turn_n_is_a_prefix_of_turn_n_plus_1_whatever_the_item_ids() -> None:
    body = ResponsesRequest(model="m", tools=TOOLS)
    _, names = tools_of(body)
    thinking = "The user wants a listing.\n  Exact   spacing matters. "
    first = conversation(None, turn_one(), names)
    second_items = turn_two(thinking)
    for item in second_items:  # ids are not the prompt's: new ones change nothing
        item["id"] = item["id"] + "-renamed"
    second = conversation(None, second_items, names)
    assert first.system == second.system and first.system is not None
    assert first.system.startswith(BASE) and "<skills_instructions>" in first.system
    assert second.messages[: len(first.messages)] == first.messages
    added = second.messages[len(first.messages) :]
    assert [m["role"] for m in added] == ["assistant", "tool", "tool", "user", "user"]
    assistant = added[0]
    assert assistant["thinking"] == thinking and assistant["content"] == "I'll run it."
    assert [c["function"]["name"] for c in assistant["tool_calls"]] == [
        "exec_command", "multi_agent_v1.close_agent",
    ]  # fmt: skip
    assert added[1]["tool_name"] == "exec_command" and added[1]["tool_call_id"] == "call_e668"
    # a developer message in the middle stays where it is, said as a reminder
    assert added[3]["content"] == REMINDER.format(
        "<permissions instructions>sandbox: read-only</permissions instructions>"
    )
    # and turn N+2 (the answer and one more prompt appended) again extends N+1
    third = conversation(
        None,
        [*turn_two(thinking), message("assistant", "Bye!", "m1"), message("user", "ok", "m2")],
        names,
    )
    assert third.messages[: len(second.messages)] == second.messages


def test_namespaced_tools_are_flattened_and_their_calls_split_back() -> None:
    tools, names = tools_of(ResponsesRequest(model="m", tools=TOOLS))
    assert [t["function"]["name"] for t in tools] == ["exec_command", "multi_agent_v1.close_agent"]
    answer = Answer(text="", thinking="hmm", input_tokens=1, output_tokens=1, tool_calls=[
        {"id": "call_1", "function": {"name": "multi_agent_v1.close_agent",
                                      "arguments": {"target": "a1"}}},
        {"function": {"name": "exec_command", "arguments": {"cmd": "pwd"}}},
    ])  # fmt: skip
    shapes = layout(answer, names, incomplete=False, parallel_tool_calls=True)
    items = output_items(shapes, answer)
    assert [i["type"] for i in items] == ["reasoning", "function_call", "function_call"]
    assert items[1]["name"] == "close_agent" and items[1]["namespace"] == "multi_agent_v1"
    assert items[1]["call_id"] == "call_1" and json.loads(items[1]["arguments"]) == {"target": "a1"}
    assert "namespace" not in items[2] and items[2]["call_id"].startswith("call_")
    assert decode_thinking(items[0]["encrypted_content"]) == "hmm"
    # echoed back, they are the calls the model made
    again = conversation(None, [message("user", "go", "u"), *copy.deepcopy(items)], names)
    assert [c["function"]["name"] for c in again.messages[1]["tool_calls"]] == [
        "multi_agent_v1.close_agent", "exec_command",
    ]  # fmt: skip
    assert again.messages[1]["thinking"] == "hmm"
    # tool_choice narrows what the model is offered; none offers nothing
    only, _ = tools_of(ResponsesRequest(
        model="m", tools=TOOLS, tool_choice={"type": "function", "name": "exec_command"}
    ))  # fmt: skip
    assert [t["function"]["name"] for t in only] == ["exec_command"]
    assert tools_of(ResponsesRequest(model="m", tools=TOOLS, tool_choice="none"))[0] == []
    one = layout(answer, names, incomplete=False, parallel_tool_calls=False)
    assert [s["type"] for s in one] == ["reasoning", "function_call"]


def test_thinking_of_another_server_is_taken_as_it_is() -> None:
    assert decode_thinking("plain thinking from Ollama") == "plain thinking from Ollama"
    odd = "ogw1:***not base64***"
    assert decode_thinking(odd) == odd
    text = "ünïcode and \n newlines \t and emoji 🙂"
    assert decode_thinking(encode_thinking(text)) == text


@pytest.fixture
def gateway_url(emulator_url: str, tmp_path: Path) -> Iterator[str]:
    with serving_in_thread(create_app(gateway_settings([emulator_url], tmp_path))) as url:
        yield url


def test_each_turn_evaluates_only_what_it_adds(gateway_url: str) -> None:
    """Codex's way, through the gateway and the emulator's prompt cache (Ollama's
    counting): `store: false`, the whole history each turn; turn N+1's `input_tokens`
    (the backend's `prompt_eval_count`) are the few tokens it appended."""

    def turn(items: list[dict[str, Any]]) -> dict[str, Any]:
        body = {"model": "llama3.1:8b", "input": items, "tools": TOOLS, "store": False,
                "stream": True, "prompt_cache_key": "thread-1"}  # fmt: skip
        with httpx.stream("POST", f"{gateway_url}/v1/responses", json=body, timeout=30) as reply:
            assert reply.status_code == 200, reply.read()
            lines = [line for line in reply.iter_lines() if line.startswith("data: ")]
        final: dict[str, Any] = json.loads(lines[-1][6:])
        assert final["type"] == "response.completed", final
        return dict(final["response"])

    items = turn_one()
    first = turn(items)
    [call] = first["output"]
    assert call["type"] == "function_call" and json.loads(call["arguments"]) == {"cmd": "ls -la"}
    items += [call, {"type": "function_call_output", "call_id": call["call_id"],
                     "output": "Process exited with code 0\nOutput:\ntotal 0\n"}]  # fmt: skip
    second = turn(items)
    [answer] = second["output"]
    assert answer["type"] == "message" and answer["content"][0]["text"]
    items += [answer, message("developer", "<permissions>read-only</permissions>", "p"),
              message("user", "and now say bye", "u2")]  # fmt: skip
    third = turn(items)
    prompt_tokens = [r["usage"]["input_tokens"] for r in (first, second, third)]
    print(f"\ninput_tokens of turns 1-3: {prompt_tokens}")  # for the record (-s)
    assert prompt_tokens[0] > 1000, prompt_tokens
    assert prompt_tokens[1] < 40 and prompt_tokens[2] < 80 + len(answer["content"][0]["text"]), (
        prompt_tokens
    )
