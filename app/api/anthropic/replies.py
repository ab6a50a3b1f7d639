"""The core's results and chunks as Anthropic's bodies and events.

A finished run is a `message` (`content` blocks: `thinking`, `text`, `tool_use`;
`stop_reason`; `usage`). A streamed run is Anthropic's events: `message_start` and a `ping`
at once (a client such as Claude Code takes a stream without `message_start` for broken),
then one block at a time (`content_block_start`, its deltas, `content_block_stop`): the
thinking, the text, then each tool call (the core hands tool calls over with the result),
then `message_delta` (stop reason and the counts) and `message_stop`. A run that fails
once streaming has started ends with an `error` event.

Counts: `input_tokens` is the backend's `prompt_eval_count`, the prompt tokens it had to
evaluate (what its prompt cache did not hold, as Anthropic counts input past its cache);
`message_start` can only give an estimate of it, `message_delta` gives the real one.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from app.ollama.metadata import run_metadata
from app.ollama.types import ModelExecutionResult

__all__ = ["EventWriter", "message", "message_id", "sse", "stop_reason", "usage"]

Event = tuple[str, dict[str, Any]]


def message_id() -> str:
    return f"msg_{secrets.token_hex(12)}"


def sse(name: str, data: Mapping[str, Any]) -> bytes:
    """One server-sent event, as Anthropic writes them."""
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"event: {name}\ndata: {payload}\n\n".encode("utf-8", "backslashreplace")


def usage(result: ModelExecutionResult) -> dict[str, int]:
    meta = run_metadata(result)
    return {
        "input_tokens": int(meta.get("prompt_eval_count") or 0),
        "output_tokens": int(meta.get("eval_count") or result.tokens_used or 0),
    }


def stop_reason(result: ModelExecutionResult) -> str:
    """`tool_use` when the model called a tool, `max_tokens` when `num_predict` cut it,
    else `end_turn` (Ollama does not say whether a stop sequence ended the answer)."""
    meta = run_metadata(result)
    if meta.get("tool_calls"):
        return "tool_use"
    return "max_tokens" if meta.get("done_reason") == "length" else "end_turn"


def _tool_uses(calls: Sequence[Any]) -> list[dict[str, Any]]:
    """Ollama's tool calls as `tool_use` blocks; the backend's call id is kept."""
    blocks = []
    for call in calls:
        function = call.get("function", {}) if isinstance(call, Mapping) else {}
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                arguments = {"arguments": arguments}
        call_id = call.get("id") if isinstance(call, Mapping) else None
        blocks.append(
            {
                "type": "tool_use",
                "id": call_id if isinstance(call_id, str) and call_id else _tool_use_id(),
                "name": str(function.get("name") or ""),
                "input": arguments if isinstance(arguments, dict) else {},
            }
        )
    return blocks


def _tool_use_id() -> str:
    return f"toolu_{secrets.token_hex(12)}"


def message(model: str, result: ModelExecutionResult, id_: str | None = None) -> dict[str, Any]:
    """A finished run as Anthropic's `message`."""
    meta = run_metadata(result)
    content: list[dict[str, Any]] = []
    if meta.get("thinking"):
        content.append({"type": "thinking", "thinking": meta["thinking"], "signature": ""})
    if result.response:
        content.append({"type": "text", "text": result.response})
    content += _tool_uses(meta.get("tool_calls") or [])
    return {
        "id": id_ or message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(result),
        "stop_sequence": None,
        "usage": usage(result),
    }


class EventWriter:
    """The events of one streamed message, block by block."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = message_id()
        self.index = 0
        self.open: str | None = None
        """The type of the block being written (thinking or text), if any."""

    def start(self, estimated_input_tokens: int) -> list[Event]:
        started: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": estimated_input_tokens, "output_tokens": 0},
        }
        return [("message_start", {"type": "message_start", "message": started}), PING]

    def _switch(self, kind: str) -> list[Event]:
        """Close the open block unless it is of `kind`; open one of `kind`."""
        if self.open == kind:
            return []
        events = self._close()
        block: dict[str, Any] = {"type": kind, kind: ""}
        if kind == "thinking":
            block["signature"] = ""
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": self.index, "content_block": block},
            )
        )
        self.open = kind
        return events

    def _close(self) -> list[Event]:
        if self.open is None:
            return []
        stop = {"type": "content_block_stop", "index": self.index}
        self.open = None
        self.index += 1
        return [("content_block_stop", stop)]

    def _delta(self, delta: dict[str, Any]) -> Event:
        return (
            "content_block_delta",
            {"type": "content_block_delta", "index": self.index, "delta": delta},
        )

    def piece(self, content: str, thinking: str | None) -> list[Event]:
        events: list[Event] = []
        if thinking:
            events += self._switch("thinking")
            events.append(self._delta({"type": "thinking_delta", "thinking": thinking}))
        if content:
            events += self._switch("text")
            events.append(self._delta({"type": "text_delta", "text": content}))
        return events

    def ending(self, result: ModelExecutionResult) -> list[Event]:
        """The closing events: the open block closed, the tool calls, the stop reason and
        the counts, `message_stop`."""
        events = self._close()
        for block in _tool_uses(run_metadata(result).get("tool_calls") or []):
            started: dict[str, Any] = {**block, "input": {}}
            events.append(
                (
                    "content_block_start",
                    {"type": "content_block_start", "index": self.index, "content_block": started},
                )
            )
            partial = json.dumps(block["input"], ensure_ascii=False)
            events.append(self._delta({"type": "input_json_delta", "partial_json": partial}))
            events.append(
                ("content_block_stop", {"type": "content_block_stop", "index": self.index})
            )
            self.index += 1
        delta = {"stop_reason": stop_reason(result), "stop_sequence": None}
        events.append(
            ("message_delta", {"type": "message_delta", "delta": delta, "usage": usage(result)})
        )
        events.append(("message_stop", {"type": "message_stop"}))
        return events


PING: Event = ("ping", {"type": "ping"})


def error_event(kind: str, text: str) -> Event:
    return ("error", {"type": "error", "error": {"type": kind, "message": text}})
