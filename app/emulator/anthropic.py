"""Ollama's Anthropic Messages layer, `POST /v1/messages` (Ollama 0.14 and later).

What Ollama's `middleware/anthropic.go` and `anthropic/anthropic.go` do, so that a test
pointing an Anthropic client (Claude Code, the `anthropic` SDK) at the emulator sees what
it would see of Ollama:

- the request is checked (`model is required`, `max_tokens is required and must be
  positive`, `messages is required`) and becomes a chat: the system blocks' text
  concatenated, roles passed through as sent (a `role: "system"` message stays in place),
  text blocks concatenated, `tool_result` blocks as `tool` messages (before the text of a
  user message), `tool_use` blocks as tool calls, the last `thinking` block as the
  message's thinking, other blocks ignored; `max_tokens` is `num_predict`;
  `thinking.type` `enabled`/`disabled` or else `output_config.effort` is `think`, dropped
  for a model that cannot think;
- the chat's answer becomes Anthropic's `message` or its events: `message_start`, a block
  at a time (thinking, text, each tool call with its whole input in one
  `input_json_delta`), `message_delta` with the stop reason and the counts,
  `message_stop`. No `ping`, no `signature`, no `stop_sequence`, no `error` event: a
  failure once the reply has started ends the stream there;
- errors are `{"type": "error", "error": {"type", "message"}, "request_id"}` with the
  chat's status.

There is no `/v1/messages/count_tokens` in Ollama: it answers `404 page not found`, and so
does the emulator.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import secrets
from collections.abc import AsyncIterator
from typing import Any

from app.emulator import decoding
from app.emulator.errors import CutConnection, OllamaError, json_type
from app.emulator.inference import InferenceEndpoints
from app.emulator.responses import (
    Scope,
    Send,
    lines_of,
    send_body,
    send_cut_body,
    single_reply,
)
from app.emulator.wire import dumps

__all__ = ["AnthropicEndpoint", "send_anthropic_error"]

JSON = dict[str, Any]

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 429: "rate_limit_error",
               503: "overloaded_error", 529: "overloaded_error"}  # fmt: skip
FIELD_TYPES = {"model": "string", "max_tokens": "int", "messages": "array", "stream": "bool",
               "system": "any", "tools": "array"}  # fmt: skip
_ACCEPTS = {"string": {"string", "null"}, "int": {"number", "null"},
            "array": {"array", "null"}, "bool": {"bool", "null"}}  # fmt: skip
_GO_NAMES = {"string": "string", "int": "int", "array": "[]anthropic.MessageParam",
             "bool": "bool"}  # fmt: skip
STREAM_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"connection", b"keep-alive"),
]


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def anthropic_error_body(status: int, message: str) -> bytes:
    kind = ERROR_TYPES.get(status, "api_error")
    error = {"type": "error", "error": {"type": kind, "message": message}}
    return dumps({**error, "request_id": _id("req")}) + b"\n"


async def send_anthropic_error(send: Send, exc: OllamaError) -> None:
    """An error in the shape Ollama's Anthropic layer writes it."""
    await send_body(
        send, exc.status, b"application/json", anthropic_error_body(exc.status, exc.message)
    )


# -- the request --------------------------------------------------------------------------


def _checked(body: bytes) -> JSON:
    """The body as gin binds it into `anthropic.MessagesRequest`, then the middleware's
    own checks (400 with their texts)."""
    if not body.strip():
        raise OllamaError(400, "EOF")
    req = decoding.load(body)
    if not isinstance(req, dict):
        raise OllamaError(
            400,
            f"json: cannot unmarshal {json_type(req)} into Go value of type "
            "anthropic.MessagesRequest",
        )
    for key, go_type in FIELD_TYPES.items():
        value = req.get(key)
        if key not in req or go_type == "any":
            continue
        kind = json_type(value)
        if kind not in _ACCEPTS[go_type] or (
            go_type == "int" and isinstance(value, float) and not value.is_integer()
        ):
            raise OllamaError(
                400,
                f"json: cannot unmarshal {kind} into Go struct field "
                f"MessagesRequest.{key} of type {_GO_NAMES[go_type]}",
            )
    if not req.get("model"):
        raise OllamaError(400, "model is required")
    if not isinstance(req.get("max_tokens"), int | float) or req["max_tokens"] <= 0:
        raise OllamaError(400, "max_tokens is required and must be positive")
    if not req.get("messages"):
        raise OllamaError(400, "messages is required")
    return req


def _blocks(content: Any) -> list[JSON]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        kind = json_type(content)
        raise OllamaError(
            400, f"json: cannot unmarshal {kind} into Go value of type []anthropic.ContentBlock"
        )
    return [b for b in content if isinstance(b, dict)]


def _image(source: Any) -> str:
    if not isinstance(source, dict):
        raise OllamaError(400, "invalid image source")
    if source.get("type") != "base64":
        raise OllamaError(
            400,
            f"invalid image source type: {source.get('type') or ''}. "
            "Only base64 images are supported.",
        )
    data = str(source.get("data") or "")
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise OllamaError(400, f"invalid base64 image data: {exc}") from exc
    return data


def _tool_result(content: Any) -> tuple[str, list[str]]:
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        return "", []
    text, images = [], []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text" and isinstance(part.get("text"), str):
            text.append(part["text"])
        elif part.get("type") == "image":
            if not isinstance(part.get("source"), dict):
                raise OllamaError(400, "invalid tool_result image source")
            images.append(_image(part["source"]))
    return "".join(text), images


def _message(message: Any) -> list[JSON]:
    """One Anthropic message as Ollama chat messages (`convertMessage`)."""
    if not isinstance(message, dict):
        raise OllamaError(
            400,
            f"json: cannot unmarshal {json_type(message)} into Go value of type "
            "anthropic.MessageParam",
        )
    role = str(message.get("role") or "").lower()
    text: list[str] = []
    images: list[str] = []
    calls: list[JSON] = []
    results: list[JSON] = []
    thinking = ""
    for block in _blocks(message.get("content")):
        kind = block.get("type")
        if kind == "text":
            text.append(str(block.get("text") or ""))
        elif kind == "image":
            images.append(_image(block.get("source")))
        elif kind in ("tool_use", "server_tool_use"):
            if kind == "tool_use" and not block.get("id"):
                raise OllamaError(400, "tool_use block missing required 'id' field")
            if kind == "tool_use" and not block.get("name"):
                raise OllamaError(400, "tool_use block missing required 'name' field")
            arguments = block.get("input") if isinstance(block.get("input"), dict) else {}
            call = {"id": block.get("id") or "", "function": {"name": block.get("name") or "",
                                                             "arguments": arguments}}  # fmt: skip
            calls.append(call)
        elif kind == "tool_result":
            content, result_images = _tool_result(block.get("content"))
            result: JSON = {"role": "tool", "content": content}
            if result_images:
                result["images"] = result_images
            result["tool_call_id"] = str(block.get("tool_use_id") or "")
            results.append(result)
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            thinking = block["thinking"]
    out: list[JSON] = []
    if role == "user":
        out += results
    if text or images or calls or thinking:
        converted: JSON = {"role": role, "content": "".join(text)}
        if images:
            converted["images"] = images
        if calls:
            converted["tool_calls"] = calls
        if thinking:
            converted["thinking"] = thinking
        out.append(converted)
    if role != "user":
        out += results
    return out


def _think(req: JSON) -> bool | str | None:
    thinking = req.get("thinking")
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind == "enabled":
        return True
    if kind == "disabled":
        return False
    config = req.get("output_config")
    effort = config.get("effort") if isinstance(config, dict) else None
    level = str(effort or "").strip().lower()
    level = "high" if level == "xhigh" else level
    return level if level in ("high", "medium", "low", "max") else None


def chat_request(req: JSON) -> JSON:
    """`FromMessagesRequest`: the Anthropic request as Ollama's chat request."""
    messages: list[JSON] = []
    system = req.get("system")
    if isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
    elif isinstance(system, list):
        text = "".join(
            b["text"]
            for b in system
            if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        )
        if text:
            messages.append({"role": "system", "content": text})
    for message in req["messages"]:
        messages += _message(message)
    options: JSON = {"num_predict": int(req["max_tokens"])}
    for key in ("temperature", "top_p", "top_k"):
        if req.get(key) is not None:
            options[key] = req[key]
    if req.get("stop_sequences"):
        options["stop"] = req["stop_sequences"]
    tools = []
    for tool in req.get("tools") or []:
        if not isinstance(tool, dict):
            continue
        function: JSON = {"name": str(tool.get("name") or "")}
        if tool.get("description"):
            function["description"] = tool["description"]
        function["parameters"] = tool.get("input_schema") or {}
        tools.append({"type": "function", "function": function})
    chat: JSON = {"model": req["model"], "messages": messages, "options": options,
                  "stream": req.get("stream") is True}  # fmt: skip
    if tools:
        chat["tools"] = tools
    think = _think(req)
    if think is not None:
        chat["think"] = think
    return chat


def estimated_input_tokens(req: JSON) -> int:
    """`EstimateInputTokens`: a quarter of the characters of the system prompt, the
    messages (roles, text, thinking, tool blocks) and the tools; at least 1."""
    chars = 0
    system = req.get("system")
    if isinstance(system, str):
        chars += len(system)
    elif isinstance(system, list):
        chars += sum(len(str(b.get("text") or "")) for b in system if isinstance(b, dict))
    for message in req["messages"]:
        if not isinstance(message, dict):
            continue
        chars += len(str(message.get("role") or ""))
        for block in _blocks(message.get("content")):
            chars += len(str(block.get("text") or "")) + len(str(block.get("thinking") or ""))
            if block.get("type") in ("tool_use", "tool_result"):
                chars += len(dumps(block))
    for tool in req.get("tools") or []:
        if isinstance(tool, dict):
            chars += len(str(tool.get("name") or "")) + len(str(tool.get("description") or ""))
            chars += len(dumps(tool.get("input_schema") or {})) if "input_schema" in tool else 0
    return max(chars // 4, 1)


# -- the answer ---------------------------------------------------------------------------


def stop_reason(done_reason: str, tool_calls: bool) -> str:
    if tool_calls:
        return "tool_use"
    return {"stop": "end_turn", "length": "max_tokens", "": ""}.get(done_reason, "stop_sequence")


def message(message_id: str, reply: JSON) -> JSON:
    """`ToMessagesResponse`: a whole chat reply as Anthropic's message."""
    said = reply.get("message") or {}
    content: list[JSON] = []
    if said.get("thinking"):
        content.append({"type": "thinking", "thinking": said["thinking"]})
    if said.get("content"):
        content.append({"type": "text", "text": said["content"]})
    for call in said.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or "",
                        "name": function.get("name") or "",
                        "input": function.get("arguments") or {}})  # fmt: skip
    out: JSON = {"id": message_id, "type": "message", "role": "assistant",
                 "model": reply.get("model"), "content": content}  # fmt: skip
    reason = stop_reason(str(reply.get("done_reason") or ""), bool(said.get("tool_calls")))
    if reason:
        out["stop_reason"] = reason
    out["usage"] = {"input_tokens": int(reply.get("prompt_eval_count") or 0),
                    "output_tokens": int(reply.get("eval_count") or 0)}  # fmt: skip
    return out


class StreamConverter:
    """`StreamConverter.Process`: chat lines in, Anthropic events out."""

    def __init__(self, message_id: str, model: str, estimated_input_tokens: int) -> None:
        self.id = message_id
        self.model = model
        self.estimate = estimated_input_tokens
        self.first = True
        self.index = 0
        self.thinking_started = self.thinking_done = self.text_started = False
        self.calls_sent: set[str] = set()

    def _stop(self) -> tuple[str, JSON]:
        return "content_block_stop", {"type": "content_block_stop", "index": self.index}

    def _start(self, block: JSON) -> tuple[str, JSON]:
        start = {"type": "content_block_start", "index": self.index, "content_block": block}
        return "content_block_start", start

    def _delta(self, delta: JSON) -> tuple[str, JSON]:
        return "content_block_delta", {"type": "content_block_delta", "index": self.index,
                                       "delta": delta}  # fmt: skip

    def process(self, line: JSON) -> list[tuple[str, JSON]]:
        events: list[tuple[str, JSON]] = []
        said = line.get("message") or {}
        if self.first:
            self.first = False
            tokens = int(line.get("prompt_eval_count") or 0) or self.estimate
            started = {"id": self.id, "type": "message", "role": "assistant", "model": self.model,
                       "content": [], "usage": {"input_tokens": tokens, "output_tokens": 0}}  # fmt: skip
            events.append(("message_start", {"type": "message_start", "message": started}))
        thinking, content = said.get("thinking") or "", said.get("content") or ""
        if thinking and not self.thinking_done:
            if self.text_started:
                events.append(self._stop())
                self.index += 1
                self.text_started = False
            if not self.thinking_started:
                self.thinking_started = True
                events.append(self._start({"type": "thinking", "thinking": ""}))
            events.append(self._delta({"type": "thinking_delta", "thinking": thinking}))
        if content:
            if self.thinking_started and not self.thinking_done:
                self.thinking_done = True
                events.append(self._stop())
                self.index += 1
            if not self.text_started:
                self.text_started = True
                events.append(self._start({"type": "text", "text": ""}))
            events.append(self._delta({"type": "text_delta", "text": content}))
        for call in said.get("tool_calls") or []:
            call_id = str(call.get("id") or "")
            if call_id in self.calls_sent:
                continue
            if self.thinking_started and not self.thinking_done:
                self.thinking_done = True
                events.append(self._stop())
                self.index += 1
            if self.text_started:
                events.append(self._stop())
                self.index += 1
                self.text_started = False
            function = call.get("function") or {}
            events.append(self._start({"type": "tool_use", "id": call_id,
                                       "name": function.get("name") or "", "input": {}}))  # fmt: skip
            arguments = dumps(function.get("arguments") or {}).decode()
            events.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))
            events.append(self._stop())
            self.calls_sent.add(call_id)
            self.index += 1
        if line.get("done"):
            if self.text_started or (self.thinking_started and not self.thinking_done):
                events.append(self._stop())
            reason = stop_reason(str(line.get("done_reason") or ""), bool(self.calls_sent))
            delta = {"stop_reason": reason} if reason else {}
            counts = {"input_tokens": int(line.get("prompt_eval_count") or 0),
                      "output_tokens": int(line.get("eval_count") or 0)}  # fmt: skip
            events.append(("message_delta", {"type": "message_delta", "delta": delta,
                                             "usage": counts}))  # fmt: skip
            events.append(("message_stop", {"type": "message_stop"}))
        return events


def _event(name: str, data: JSON) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + dumps(data) + b"\n\n"


class AnthropicEndpoint:
    """`POST /v1/messages` over one emulator's inference endpoints."""

    def __init__(self, inference: InferenceEndpoints) -> None:
        self.inference = inference

    async def messages(self, scope: Scope, body: bytes, send: Send) -> None:
        req = _checked(body)
        chat = chat_request(req)
        raw, name, installed = self.inference.target(chat, kind="chat")
        if chat.get("think") not in (None, False) and "thinking" not in installed.spec.capabilities:
            del chat["think"]  # relax_thinking: the model cannot think, it answers anyway
        job = self.inference.prepare(chat, "chat", raw, name, installed)
        message_id = _id("msg")
        if isinstance(job, dict):  # nothing to generate: the model was loaded
            reply = dumps(message(message_id, job)) + b"\n"
            await send_body(send, 200, b"application/json", reply)
            return
        async with contextlib.AsyncExitStack() as held:
            # `num_parallel` runs at once; more wait here, as for /api/chat
            await held.enter_async_context(self.inference.state.slot(name))
            events = await self.inference.events(job)
            cut = self.inference.state.faults.cut_after_chunks
            if job.stream:
                converter = StreamConverter(message_id, raw, estimated_input_tokens(req))
                await self._stream(send, lines_of("chat", raw, events), converter, cut)
                return
            reply = dumps(message(message_id, await single_reply("chat", raw, events))) + b"\n"
            if cut is not None:
                await send_cut_body(send, reply)
            else:
                await send_body(send, 200, b"application/json", reply)

    @staticmethod
    async def _stream(
        send: Send, lines: AsyncIterator[JSON], converter: StreamConverter, cut: int | None
    ) -> None:
        """The events as the chat's lines come; the headers go with the first. An error
        line ends the stream (after `message_start`, when it is the first line)."""
        started = False

        async def write(data: bytes, *, more: bool = True) -> None:
            nonlocal started
            if not started:
                await send({"type": "http.response.start", "status": 200,
                            "headers": STREAM_HEADERS})  # fmt: skip
                started = True
            await send({"type": "http.response.body", "body": data, "more_body": more})

        sent = 0
        try:
            async for line in lines:
                if cut is not None and sent >= cut:
                    await write(b"")
                    raise CutConnection(f"emulated connection cut after {sent} chunks")
                await write(b"".join(_event(n, d) for n, d in converter.process(line)))
                sent += 1
        except OllamaError:
            if converter.first:
                await write(b"".join(_event(n, d) for n, d in converter.process({})))
        await write(b"", more=False)
