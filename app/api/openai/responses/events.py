"""The typed server-sent events of a streamed response, numbered by `sequence_number` from 0.

`response.created` and `response.in_progress` open the stream; then each output item is
`response.output_item.added`, its parts and deltas, and `response.output_item.done` (every
item gets one: clients such as Codex read an item from its `done` event, not from the
deltas); the stream always ends with `response.completed`, `response.incomplete` or
`response.failed`, carrying the whole response. Thinking streams as a reasoning item's
summary (`response.reasoning_summary_part.added`, `response.reasoning_summary_text.delta`,
...), text as a message's `output_text` part; tool calls are known when the answer ends
and come then, each with its arguments in one delta.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from app.api.openai.responses.output import new_id

__all__ = ["ResponseEvents"]


class ResponseEvents:
    """The events of one streamed response, as SSE bytes."""

    def __init__(self) -> None:
        self.sequence = 0
        self.opened: list[str] = []
        """The kinds of item opened while the answer streamed ("reasoning", "message"), in
        order: the final output keeps that order."""
        self.ids: dict[str, str] = {}
        self.reasoning_text: list[str] = []
        self.message_text: list[str] = []

    def event(self, kind: str, **data: Any) -> bytes:
        payload = {"type": kind, **data, "sequence_number": self.sequence}
        self.sequence += 1
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        return f"event: {kind}\ndata: {body}\n\n".encode("utf-8", "backslashreplace")

    def start(self, response: Mapping[str, Any]) -> list[bytes]:
        return [
            self.event("response.created", response=response),
            self.event("response.in_progress", response=response),
        ]

    def _index(self, kind: str) -> int:
        return self.opened.index(kind)

    def piece(self, content: str, thinking: str | None) -> list[bytes]:
        """The events of one streamed piece of thinking and/or text."""
        out: list[bytes] = []
        if thinking and "message" not in self.opened:
            if "reasoning" not in self.opened:
                out += self._open_reasoning()
            self.reasoning_text.append(thinking)
            out.append(
                self.event(
                    "response.reasoning_summary_text.delta",
                    item_id=self.ids["reasoning"],
                    output_index=self._index("reasoning"),
                    summary_index=0,
                    delta=thinking,
                )
            )
        if content:
            if "message" not in self.opened:
                out += self._open_message()
            self.message_text.append(content)
            out.append(
                self.event(
                    "response.output_text.delta",
                    item_id=self.ids["message"],
                    output_index=self._index("message"),
                    content_index=0,
                    delta=content,
                    logprobs=[],
                )
            )
        return out

    def _open_reasoning(self) -> list[bytes]:
        self.ids["reasoning"] = item_id = new_id("rs")
        self.opened.append("reasoning")
        index = self._index("reasoning")
        return [
            self.event(
                "response.output_item.added",
                output_index=index,
                item={"id": item_id, "type": "reasoning", "summary": []},
            ),
            self.event(
                "response.reasoning_summary_part.added",
                item_id=item_id,
                output_index=index,
                summary_index=0,
                part={"type": "summary_text", "text": ""},
            ),
        ]

    def _open_message(self) -> list[bytes]:
        self.ids["message"] = item_id = new_id("msg")
        self.opened.append("message")
        index = self._index("message")
        return [
            self.event(
                "response.output_item.added",
                output_index=index,
                item={
                    "id": item_id,
                    "type": "message",
                    "status": "in_progress",
                    "role": "assistant",
                    "content": [],
                },
            ),
            self.event(
                "response.content_part.added",
                item_id=item_id,
                output_index=index,
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
            ),
        ]

    def finish(
        self, items: Sequence[Mapping[str, Any]], response: Mapping[str, Any], ending: str
    ) -> list[bytes]:
        """Close every item of the final output (`items`, in `layout`'s order, which puts
        the items opened while streaming first), then the stream's last event (`ending`:
        response.completed, response.incomplete or response.failed)."""
        out: list[bytes] = []
        for index, item in enumerate(items):
            kind = item.get("type")
            if kind == "reasoning":
                out += self._reasoning_done(index, item)
            elif kind == "message":
                out += self._message_done(index, item)
            elif kind == "function_call":
                out += self._call_events(index, item)
        out.append(self.event(ending, response=response))
        return out

    def _reasoning_done(self, index: int, item: Mapping[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        item_id = item["id"]
        text = item["summary"][0]["text"] if item.get("summary") else ""
        if "reasoning" not in self.opened:
            out.append(
                self.event(
                    "response.output_item.added",
                    output_index=index,
                    item={"id": item_id, "type": "reasoning", "summary": []},
                )
            )
            out.append(
                self.event(
                    "response.reasoning_summary_part.added",
                    item_id=item_id,
                    output_index=index,
                    summary_index=0,
                    part={"type": "summary_text", "text": ""},
                )
            )
        part = {"type": "summary_text", "text": text}
        out.append(
            self.event(
                "response.reasoning_summary_text.done",
                item_id=item_id,
                output_index=index,
                summary_index=0,
                text=text,
            )
        )
        out.append(
            self.event(
                "response.reasoning_summary_part.done",
                item_id=item_id,
                output_index=index,
                summary_index=0,
                part=part,
            )
        )
        out.append(self.event("response.output_item.done", output_index=index, item=item))
        return out

    def _message_done(self, index: int, item: Mapping[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        item_id = item["id"]
        part = item["content"][0]
        if "message" not in self.opened:
            out.append(
                self.event(
                    "response.output_item.added",
                    output_index=index,
                    item={**item, "status": "in_progress", "content": []},
                )
            )
            out.append(
                self.event(
                    "response.content_part.added",
                    item_id=item_id,
                    output_index=index,
                    content_index=0,
                    part={**part, "text": ""},
                )
            )
        out.append(
            self.event(
                "response.output_text.done",
                item_id=item_id,
                output_index=index,
                content_index=0,
                text=part["text"],
                logprobs=[],
            )
        )
        out.append(
            self.event(
                "response.content_part.done",
                item_id=item_id,
                output_index=index,
                content_index=0,
                part=part,
            )
        )
        out.append(self.event("response.output_item.done", output_index=index, item=item))
        return out

    def _call_events(self, index: int, item: Mapping[str, Any]) -> list[bytes]:
        item_id, arguments = item["id"], item["arguments"]
        return [
            self.event(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "arguments": ""},
            ),
            self.event(
                "response.function_call_arguments.delta",
                item_id=item_id,
                output_index=index,
                delta=arguments,
            ),
            self.event(
                "response.function_call_arguments.done",
                item_id=item_id,
                output_index=index,
                arguments=arguments,
            ),
            self.event("response.output_item.done", output_index=index, item=item),
        ]
