"""How `/v1/messages` requests become the core's chat runs: Claude Code's turns, as it
sends them, become `/api/chat` messages of which each turn's are a prefix of the next's
(what lets a backend's prompt cache serve a long session), and what a client sends that
the gateway does not use is accepted, while what is really wrong is a 400 naming the field."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest

from app.api.anthropic.translate import (
    BILLING_HEADER,
    CountTokensRequest,
    MessagesRequest,
    chat_input,
    chat_plan,
    estimate_tokens,
    session_of,
)
from app.api.common.errors import ApiError
from app.ollama.run_spec import chat_spec
from tests.api.anthropic.sessions import sessions, turns


def sent(body: dict[str, Any]) -> dict[str, Any]:
    """The `/api/chat` body the core sends for a `/v1/messages` body."""
    request = MessagesRequest.model_validate(body)
    chat = chat_input(request)
    return chat_spec(request.model, chat.messages, chat_plan(request, chat.tools)).payload()


def refusal(body: dict[str, Any]) -> str:
    with pytest.raises(ApiError) as raised:
        sent(body)
    assert raised.value.status == 400
    return str(raised.value.detail)


@pytest.mark.parametrize("session", sorted(sessions()))
def test_each_claude_code_turn_is_a_prefix_of_the_next(session: str) -> None:
    """The messages of turn N are the first messages of turn N+1 (and the tools of turn N
    the first tools of N+1), although the raw requests are not: `cache_control` moves,
    content switches between a string and blocks, the environment message comes back as a
    string, and `<total_tokens>` notes arrive as new system messages."""
    bodies = [turn["body"] for turn in turns(session)]
    assert len(bodies) >= 2
    for before, after in itertools.pairwise(bodies):
        old, new = sent(before), sent(after)
        assert new["messages"][: len(old["messages"])] == old["messages"]
        assert len(new["messages"]) > len(old["messages"])
        assert new.get("tools", [])[: len(old.get("tools", []))] == old.get("tools", [])
        assert {k: v for k, v in new.items() if k not in ("messages", "tools")} == {
            k: v for k, v in old.items() if k not in ("messages", "tools")
        }


def test_system_text_stays_where_claude_code_put_it() -> None:
    """The billing block is dropped; the environment message (a system message after the
    first turn) and the `<total_tokens>` note after a tool result become user reminders in
    place; the only system message is the first."""
    last = turns("total_tokens_reminder")[-1]["body"]
    messages = sent(last)["messages"]
    roles = [m["role"] for m in messages]
    assert roles == ["system", "user", "user", "assistant", "tool", "user"]
    system = messages[0]["content"]
    assert BILLING_HEADER not in system
    assert system.startswith("You are a Claude agent, built on Anthropic's Claude Agent SDK.")
    environment, note = messages[2]["content"], messages[5]["content"]
    assert environment.startswith("<system-reminder>\n# Environment\n")
    assert note == (
        "<system-reminder>\n<total_tokens>14987663 tokens left</total_tokens>\n</system-reminder>"
    )
    call = messages[3]["tool_calls"][0]
    assert call["function"] == {
        "name": "Bash",
        "arguments": {"command": "echo hi", "description": "Print hi"},
    }
    assert messages[4] == {
        "role": "tool",
        "content": "hi",
        "tool_call_id": call["id"],
        "tool_name": "Bash",
    }


def test_what_claude_code_sends_and_the_gateway_does_not_use_is_accepted() -> None:
    body = copy.deepcopy(turns("tool_round_trip")[0]["body"])
    assert {"context_management", "output_config", "metadata", "thinking"} <= set(body)
    body["safeguards"] = [{"type": "dangerous_tool_use", "classifier_context": {"rules": []}}]
    body["thinking"] = {"type": "adaptive", "display": "updates"}
    body["messages"][0]["content"][1]["citations"] = None
    payload = sent(body)
    # effort "high" asks the model to think (dropped by the core if it cannot)
    assert payload["think"] == "high" and payload["options"] == {"num_predict": 32000}
    names = [t["function"]["name"] for t in payload["tools"]]
    assert names == ["Bash", "Read", "ToolSearch"]  # the deferred placeholder is not loaded
    assert "$schema" in payload["tools"][0]["function"]["parameters"]


def test_a_deferred_tool_is_offered_once_tool_search_loaded_it() -> None:
    first, second = (sent(t["body"]) for t in turns("tool_search"))
    names = [[t["function"]["name"] for t in p["tools"]] for p in (first, second)]
    assert names == [["Bash", "Read", "ToolSearch"], ["Bash", "Read", "ToolSearch", "WebFetch"]]
    assert second["messages"][-1] == {
        "role": "tool",
        "content": "Tool loaded: WebFetch\n",
        "tool_call_id": second["messages"][-2]["tool_calls"][0]["id"],
        "tool_name": "ToolSearch",
    }


def test_the_session_comes_from_claude_codes_header_or_metadata() -> None:
    turn = turns("tool_round_trip")[0]
    body = turn["body"]
    expected = turn["headers"]["x-claude-code-session-id"]
    assert session_of(turn["headers"], body["metadata"]) == expected
    assert session_of({}, body["metadata"]) == expected  # metadata.user_id is JSON
    assert session_of({"x-session-affinity": "s1"}, None) == "s1"
    assert session_of({}, {"user_id": "alice"}) is None


BASE = {"model": "m:1", "max_tokens": 5}


def test_content_is_normalised_and_options_mapped() -> None:
    text = sent({**BASE, "messages": [{"role": "user", "content": "Hi there"}]})
    blocks = sent(
        {
            **BASE,
            "system": "Be brief.",
            "stop_sequences": ["\n\n"],
            "temperature": 0.2,
            "top_p": 0.9,
            "top_k": 20,
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Hi ", "cache_control": {"type": "ephemeral"}},
                        {"type": "text", "text": "there"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                     "data": "aGVsbG8="}},
                    ],
                }
            ],
        }
    )  # fmt: skip
    assert text["messages"] == [{"role": "user", "content": "Hi there"}]
    assert blocks["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there", "images": ["aGVsbG8="]},
    ]
    assert blocks["options"] == {
        "num_predict": 5, "temperature": 0.2, "top_p": 0.9, "top_k": 20, "stop": ["\n\n"],
    }  # fmt: skip
    assert blocks["think"] is True
    disabled = sent({**BASE, "thinking": {"type": "disabled"}, "output_config": {"effort": "low"},
                     "messages": [{"role": "user", "content": "x"}]})  # fmt: skip
    assert disabled["think"] is False
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    formatted = sent({**BASE, "output_config": {"format": {"type": "json_schema", "schema": schema}},
                      "messages": [{"role": "user", "content": "x"}]})  # fmt: skip
    assert formatted["format"] == schema


def test_tool_choice_none_offers_no_tools() -> None:
    tools = [{"name": "t", "input_schema": {"type": "object"}}]
    messages = [{"role": "user", "content": "x"}]
    assert "tools" in sent({**BASE, "tools": tools, "messages": messages})
    none = sent({**BASE, "tools": tools, "tool_choice": {"type": "none"}, "messages": messages})
    assert "tools" not in none


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"messages": [{"role": "user", "content": [{"type": "video"}]}]},
         "messages.0.content.0.type: unknown content block type 'video'"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": ""}]}, "must not be empty"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
            "type": "url", "url": "https://example.com/a.png"}}]}]},
         "messages.0.content.0.source.type"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
            "type": "base64", "data": "not base64!"}}]}]}, "messages.0.content.0.source.data"),
        ({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "name": "t"}]}]},
         "messages.0.content.0.id"),
        ({"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]},
         "messages.0.content.0.tool_use_id"),
        ({"tools": [{"name": "t"}], "messages": [{"role": "user", "content": "x"}]},
         "tools.0.input_schema"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}],
          "messages": [{"role": "user", "content": "x"}]}, "tools.0.type"),
        ({"tool_choice": {"type": "tool", "name": "nope"},
          "messages": [{"role": "user", "content": "x"}]}, "tool_choice.name"),
        ({"thinking": {"type": "sometimes"}, "messages": [{"role": "user", "content": "x"}]},
         "thinking.type"),
        ({"system": [{"type": "image"}], "messages": [{"role": "user", "content": "x"}]},
         "system.0.type"),
    ],
)  # fmt: skip
def test_bad_input_is_a_400_naming_the_field(change: dict[str, Any], names: str) -> None:
    assert names in refusal({**BASE, **change})


def test_count_tokens_estimates_what_would_be_sent() -> None:
    small = CountTokensRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "foo"}], "tools": []}
    )
    assert estimate_tokens(chat_input(small)) == 1
    body = {k: v for k, v in turns("tool_round_trip")[-1]["body"].items() if k != "max_tokens"}
    whole = CountTokensRequest.model_validate(body)
    chat = chat_input(whole)
    chars = sum(len(m["content"]) for m in chat.messages)
    assert estimate_tokens(chat) >= chars // 4 > 100
