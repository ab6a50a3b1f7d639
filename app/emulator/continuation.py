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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Conversation", "Prefill", "conversation", "prefill_of", "rest_after"]

JSON = dict[str, Any]


@dataclass(frozen=True)
class Conversation:
    """The inputs of the filler's text: the system prompt, the history as one string (a
    generate's prompt), and the last user message (for tool calls)."""

    system: str
    history: str
    last_user: str


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
        return Conversation(system + leading, prompt, prompt)
    history = "\n".join(f"{m.get('role')}: {m.get('content') or ''}" for m in messages)
    users = [str(m.get("content") or "") for m in messages if m.get("role") == "user"]
    return Conversation(system, history, users[-1] if users else "")


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
