"""What the filler engine's text is derived from, and how it continues a cut-short answer.

Two rules make a failover's seam checkable exactly:

- A conversation of one user turn (after an optional system message) reads like a generate
  of that prompt with that system prompt, as Ollama's templates render both alike: chat
  `[system S, user P]` gives the text of generate `P` with `system: S`.
- A chat whose last message is the assistant's (content and/or thinking) asks for that
  message to be continued, as Ollama does: when the message is the start of the answer the
  conversation before it would get, the reply is exactly the rest of that answer (a piece
  the message ends inside is continued from that character), so the message plus the reply
  is the undisturbed answer. Any other assistant message is an ordinary turn.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Conversation", "Prefill", "asking", "conversation", "prefill_of", "rest_after"]

JSON = dict[str, Any]


@dataclass(frozen=True)
class Conversation:
    """The inputs of the filler's text: the system prompt, the history as one string (a
    generate's prompt), and what the user last asked (for tool calls; see `asking`)."""

    system: str
    history: str
    last_user: str


_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.DOTALL)


def asking(messages: Sequence[JSON]) -> str:
    """What the user last asked, for a tool call: the last user message with text of its
    own (`<system-reminder>` sections, which agents such as Claude Code add to the
    conversation, are not the user's words); "" once a tool's result came after it (the
    model answers with what the tool gave)."""
    for message in reversed(messages):
        role = message.get("role")
        if role == "tool":
            return ""
        if role == "user":
            text = _REMINDER.sub("", str(message.get("content") or "")).strip()
            if text:
                return text
    return ""


@dataclass(frozen=True)
class Prefill:
    """A trailing assistant message to continue, and the conversation before it."""

    before: list[JSON]
    content: str
    thinking: str


def conversation(system: str, messages: Sequence[JSON]) -> Conversation:
    """What a chat's text is derived from (see the module doc for the one-turn rule)."""
    turns = list(messages)
    leading = ""
    if len(turns) == 2 and turns[0].get("role") == "system":
        leading = str(turns[0].get("content") or "")
        turns = turns[1:]
    if len(turns) == 1 and turns[0].get("role") == "user":
        prompt = str(turns[0].get("content") or "")
        return Conversation(system + leading, prompt, asking(turns))
    history = "\n".join(f"{m.get('role')}: {m.get('content') or ''}" for m in messages)
    return Conversation(system, history, asking(messages))


def prefill_of(messages: Sequence[JSON]) -> Prefill | None:
    """The trailing assistant message to continue (with text, no tool calls), or None."""
    if len(messages) < 2:
        return None
    last = messages[-1]
    if last.get("role") != "assistant" or last.get("tool_calls"):
        return None
    content, thinking = str(last.get("content") or ""), str(last.get("thinking") or "")
    if not content and not thinking:
        return None
    return Prefill(list(messages[:-1]), content, thinking)


def rest_after(pieces: Sequence[str], done: str) -> list[str] | None:
    """The pieces after the text `done` when the pieces' text starts with it (a piece
    `done` ends inside is kept from that character on); None when it does not."""
    if not "".join(pieces).startswith(done):
        return None
    rest: list[str] = []
    used = 0
    for piece in pieces:
        end = used + len(piece)
        if end > len(done):
            rest.append(piece[max(0, len(done) - used) :])
        used = end
    return rest
