"""`POST /v1/responses`: OpenAI's Responses API as Ollama serves it (since 0.13.3).

Ollama's layer (`openai/responses.go`, `middleware/openai.go`) turns the request into a chat
and the chat's answer into a `response`; this module does the same over the emulator's
chat (`InferenceEndpoints.prepare`), so a client's own tests can use the emulator where
they would use Ollama. Like Ollama it is stateless: `previous_response_id`, `store`,
`tool_choice`, `parallel_tool_calls` and `metadata` are not read, every response says
`"store": false` and `"previous_response_id": null`, and its status is always
`completed` (a reply cut by `max_output_tokens` too). `instructions` is a leading system
message, developer messages are passed on as they are, a reasoning item's
`encrypted_content` is the next assistant message's thinking, namespaced tools become
`namespace.name` functions (their calls are not split back), the temperature is 1.0 unless
given. A `zstd` body is decompressed (at most 20 MiB). One difference: Ollama runs the
`web_search` tool against ollama.com; offline, the emulator leaves that tool out.

Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import zstandard

from app.emulator import decoding
from app.emulator.engine import Event, Finished, GenerationJob, Piece
from app.emulator.errors import OllamaError
from app.emulator.inference import InferenceEndpoints
from app.emulator.responses import JSON_TYPE, Scope, Send, send_body

__all__ = ["ResponsesEndpoint"]

JSON = dict[str, Any]

MAX_DECOMPRESSED = 20 << 20
IMAGE_PREFIXES = tuple(f"data:image/{t};base64," for t in ("jpeg", "jpg", "png", "webp"))
EFFORTS: dict[str, bool | str] = {"none": False, "minimal": "low", "low": "low",
                                  "medium": "medium", "high": "high", "max": "max",
                                  "xhigh": "max", "ultra": "max"}  # fmt: skip


def _go_json(obj: Any, *, sort: bool = False) -> bytes:
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, sort_keys=sort)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def _error_body(status: int, message: str) -> bytes:
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    error = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return _go_json(error) + b"\n"


def _rand() -> int:
    return random.randrange(1_000_000)  # ids, as Ollama makes them


# -- the request -----------------------------------------------------------------------------


def _content(parts: Any) -> tuple[str, list[str]]:
    if isinstance(parts, str):
        return parts, []
    text, images = "", []
    for i, part in enumerate(parts or []):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text"):
            text += str(part.get("text") or "")
        elif kind == "input_image":
            url = str(part.get("image_url") or "")
            if not url:
                continue  # a file_id: not supported, skipped
            if url.startswith(("http://", "https://")):
                raise OllamaError(
                    400,
                    "image URLs are not currently supported, please use base64 encoded data "
                    "instead",
                )
            prefix = (
                "data:;base64,"
                if url.startswith("data:;base64,")
                else next((p for p in IMAGE_PREFIXES if url.startswith(p)), None)
            )
            if prefix is None:
                raise OllamaError(400, "invalid image input")
            images.append(url[len(prefix) :])
        elif kind == "input_file":
            raise OllamaError(400, "file inputs are not currently supported")
        else:
            raise OllamaError(400, f"content[{i}]: unknown content type: {kind}")
    return text, images


def _arguments(raw: Any) -> JSON:
    if not raw:
        return {}
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError as exc:
        raise OllamaError(400, f"failed to parse function call arguments: {exc}") from exc
    return value if isinstance(value, dict) else {}


def _messages(req: JSON) -> list[JSON]:
    messages: list[JSON] = []
    if req.get("instructions"):
        messages.append({"role": "system", "content": str(req["instructions"])})
    given = req.get("input")
    if isinstance(given, str):
        if given:
            messages.append({"role": "user", "content": given})
        return messages
    if given is not None and not isinstance(given, list):
        raise OllamaError(400, "input must be a string or array")
    items = given or []
    thinking = ""
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise OllamaError(400, f"input[{i}]: input item must be an object")
        kind = item.get("type") or ("message" if item.get("role") else "")
        if kind == "reasoning":
            thinking = str(item.get("encrypted_content") or "")
        elif kind == "message":
            text, images = _content(item.get("content"))
            message: JSON = {"role": item.get("role"), "content": text}
            if images:
                message["images"] = images
            if message["role"] == "assistant" and thinking:
                message["thinking"], thinking = thinking, ""
            following = items[i + 1] if i + 1 < len(items) else None
            answers = (
                isinstance(following, dict) and following.get("type") == "function_call_output"
            )
            last = messages[-1] if messages else None
            if message["role"] == "assistant" and answers and last and last["role"] == "assistant":
                ids = [c.get("id") for c in last.get("tool_calls") or []]
                if following and following.get("call_id") in ids:
                    if last["content"] and text:
                        last["content"] += "\n"
                    last["content"] += text
                    continue
            messages.append(message)
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "function": {"name": item.get("name"),
                    "arguments": _arguments(item.get("arguments"))}}  # fmt: skip
            if messages and messages[-1]["role"] == "assistant":
                messages[-1].setdefault("tool_calls", []).append(call)
                if thinking:
                    messages[-1]["thinking"], thinking = thinking, ""
            else:
                message = {"role": "assistant", "content": "", "tool_calls": [call]}
                if thinking:
                    message["thinking"], thinking = thinking, ""
                messages.append(message)
        elif kind == "function_call_output":
            output = item.get("output")
            text, images = _content(output) if isinstance(output, list) else (str(output or ""), [])
            message = {"role": "tool", "content": text, "tool_call_id": item.get("call_id")}
            if images:
                message["images"] = images
            messages.append(message)
        elif kind == "web_search_call":
            continue
        elif not kind:
            raise OllamaError(400, f"input[{i}]: input item missing required 'type' field")
        else:
            raise OllamaError(400, f'input[{i}]: unknown input item type: "{kind}"')
    if thinking:
        messages.append({"role": "assistant", "content": "", "thinking": thinking})
    return messages


def _tools(tools: Any, prefix: str = "") -> list[JSON]:
    out: list[JSON] = []
    for tool in tools or []:
        if not isinstance(tool, dict) or tool.get("type") == "web_search":
            continue
        if tool.get("type") == "namespace":
            name = str(tool.get("name") or "")
            out += _tools(tool.get("tools"), f"{prefix}{name}." if name else prefix)
            continue
        name = str(tool.get("name") or "")
        if prefix and not name.startswith(prefix):
            name = prefix + name
        function: JSON = {"name": name, "description": str(tool.get("description") or "")}
        if tool.get("parameters") is not None:
            function["parameters"] = tool["parameters"]
        out.append({"type": tool.get("type"), "function": function})
    return out


def chat_request(req: JSON) -> JSON:
    """The `/api/chat` request Ollama makes of a Responses request."""
    options: JSON = {"temperature": req["temperature"] if req.get("temperature") is not None
                     else 1.0}  # fmt: skip
    if req.get("top_p") is not None:
        options["top_p"] = req["top_p"]
    if req.get("max_output_tokens") is not None:
        options["num_predict"] = req["max_output_tokens"]
    chat: JSON = {"model": req.get("model") or "", "messages": _messages(req),
                  "options": options, "stream": req.get("stream") is True}  # fmt: skip
    effort = str((req.get("reasoning") or {}).get("effort") or "")
    if effort:
        if effort not in EFFORTS:
            raise OllamaError(
                400,
                f'invalid reasoning value: "{effort}" (must be "minimal", "low", "medium", '
                '"high", "xhigh", "ultra", "max", or "none")',
            )
        chat["think"] = EFFORTS[effort]
    tools = _tools(req.get("tools"))
    if tools:
        chat["tools"] = tools
    fmt = ((req.get("text") or {}).get("format")) or {}
    if fmt.get("type") == "json_schema" and fmt.get("schema") is not None:
        chat["format"] = fmt["schema"]
    return chat


# -- the reply ------------------------------------------------------------------------------


def _response(req: JSON, response_id: str, status: str, output: list[JSON],
              usage: JSON | None, created_at: int) -> JSON:  # fmt: skip
    fmt = ((req.get("text") or {}).get("format")) or {"type": "text"}
    reasoning = req.get("reasoning") or {}
    echoed = None
    if reasoning.get("effort") or reasoning.get("summary"):
        echoed = {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")}
    tools = [{"type": t.get("type"), "name": t.get("name"), "description": t.get("description"),
              "strict": t.get("strict"), "parameters": t.get("parameters")}
             for t in req.get("tools") or [] if isinstance(t, dict)]  # fmt: skip
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "completed_at": None,
        "status": status,
        "incomplete_details": None,
        "model": req.get("model"),
        "previous_response_id": None,
        "instructions": req.get("instructions") or None,
        "output": output,
        "error": None,
        "tools": tools,
        "tool_choice": "auto",
        "truncation": req.get("truncation") or "disabled",
        "parallel_tool_calls": True,
        "text": {"format": fmt},
        "top_p": req["top_p"] if req.get("top_p") is not None else 1.0,
        "presence_penalty": 0,
        "frequency_penalty": 0,
        "top_logprobs": 0,
        "temperature": req["temperature"] if req.get("temperature") is not None else 1.0,
        "reasoning": echoed,
        "usage": usage,
        "max_output_tokens": req.get("max_output_tokens"),
        "max_tool_calls": None,
        "store": False,
        "background": bool(req.get("background")),
        "service_tier": "default",
        "metadata": {},
        "safety_identifier": None,
        "prompt_cache_key": None,
    }


def _usage(finished: Finished) -> JSON:
    prompt = finished.metrics.get("prompt_eval_count", 0)
    output = finished.metrics.get("eval_count", 0)
    return {"input_tokens": prompt, "output_tokens": output, "total_tokens": prompt + output,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0}}  # fmt: skip


def _arguments_text(call: JSON) -> str:
    arguments = (call.get("function") or {}).get("arguments") or {}
    return _go_json(arguments).decode()


def _text_part(text: str) -> JSON:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class _Events:
    """Ollama's `ResponsesStreamConverter`: the events of one streamed response."""

    def __init__(self, req: JSON, response_id: str, item_id: str) -> None:
        self.req, self.response_id, self.item_id = req, response_id, item_id
        self.sequence = 0
        self.index = 0
        self.text: str | None = None
        self.thinking: str | None = None
        self.reasoning_id = ""
        self.calls_sent = False
        self.done_items: list[JSON] = []

    def event(self, kind: str, data: JSON) -> bytes:
        data = {**data, "type": kind, "sequence_number": self.sequence}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + _go_json(data, sort=True) + b"\n\n"

    def opening(self) -> list[bytes]:
        start = _response(self.req, self.response_id, "in_progress", [], None, int(time.time()))
        return [self.event("response.created", {"response": start}),
                self.event("response.in_progress", {"response": start})]  # fmt: skip

    def _end_reasoning(self) -> list[bytes]:
        if self.thinking is None:
            return []
        thinking, item_id, index = self.thinking, self.reasoning_id, self.index
        item = {"id": item_id, "type": "reasoning",
                "summary": [{"type": "summary_text", "text": thinking}],
                "encrypted_content": thinking}  # fmt: skip
        self.done_items.append(item)
        self.thinking, self.index = None, self.index + 1
        return [
            self.event("response.reasoning_summary_text.done", {"item_id": item_id,
                       "output_index": index, "summary_index": 0, "text": thinking}),
            self.event("response.output_item.done", {"output_index": index, "item": item}),
        ]  # fmt: skip

    def piece(self, piece: Piece) -> list[bytes]:
        out: list[bytes] = []
        if piece.thinking:
            if self.thinking is None:
                self.thinking, self.reasoning_id = "", f"rs_{_rand()}"
                out.append(self.event("response.output_item.added", {"output_index": self.index,
                           "item": {"id": self.reasoning_id, "type": "reasoning",
                                    "summary": []}}))  # fmt: skip
            self.thinking += piece.thinking
            out.append(self.event("response.reasoning_summary_text.delta", {
                "item_id": self.reasoning_id, "output_index": self.index, "summary_index": 0,
                "delta": piece.thinking}))  # fmt: skip
        if piece.tool_calls:
            out += self._end_reasoning()
            for i, call in enumerate(piece.tool_calls):
                index, item_id = self.index + i, f"fc_{_rand()}_{i}"
                name = (call.get("function") or {}).get("name")
                arguments = _arguments_text(call)
                item = {"id": item_id, "type": "function_call", "status": "completed",
                        "call_id": call.get("id"), "name": name, "arguments": arguments}  # fmt: skip
                self.done_items.append(item)
                out += [
                    self.event("response.output_item.added", {"output_index": index, "item": {
                        **item, "status": "in_progress", "arguments": ""}}),
                    self.event("response.function_call_arguments.delta", {
                        "item_id": item_id, "output_index": index, "delta": arguments}),
                    self.event("response.function_call_arguments.done", {
                        "item_id": item_id, "output_index": index, "arguments": arguments}),
                    self.event("response.output_item.done", {"output_index": index, "item": item}),
                ]  # fmt: skip
            self.index += len(piece.tool_calls)
            self.calls_sent = True
        if not piece.tool_calls and not self.calls_sent and piece.content:
            out += self._end_reasoning()
            if self.text is None:
                self.text = ""
                out.append(self.event("response.output_item.added", {"output_index": self.index,
                           "item": {"id": self.item_id, "type": "message",
                                    "status": "in_progress", "role": "assistant",
                                    "content": []}}))  # fmt: skip
                out.append(self.event("response.content_part.added", {
                    "item_id": self.item_id, "output_index": self.index, "content_index": 0,
                    "part": _text_part("")}))  # fmt: skip
            self.text += piece.content
            out.append(self.event("response.output_text.delta", {
                "item_id": self.item_id, "output_index": self.index, "content_index": 0,
                "delta": piece.content, "logprobs": []}))  # fmt: skip
        return out

    def finished(self, finished: Finished) -> list[bytes]:
        out = self._end_reasoning()
        output = list(self.done_items)
        if not self.calls_sent and self.text is not None:
            text = self.text
            item = {"id": self.item_id, "type": "message", "status": "completed",
                    "role": "assistant", "content": [_text_part(text)]}  # fmt: skip
            output.append(item)
            where = {"item_id": self.item_id, "output_index": self.index, "content_index": 0}
            out += [
                self.event("response.output_text.done", {**where, "text": text, "logprobs": []}),
                self.event("response.content_part.done", {**where, "part": _text_part(text)}),
                self.event("response.output_item.done", {"output_index": self.index, "item": item}),
            ]
        response = _response(self.req, self.response_id, "completed", output, _usage(finished),
                             int(time.time()))  # fmt: skip
        response["completed_at"] = int(time.time())
        out.append(self.event("response.completed", {"response": response}))
        return out


async def _whole(req: JSON, response_id: str, item_id: str, events: AsyncIterator[Event]) -> JSON:
    """Ollama's `ToResponse`: the non-streamed response."""
    text, thinking, calls = "", "", []
    finished: Finished | None = None
    async for event in events:
        if isinstance(event, Finished):
            finished = event
            break
        text += event.content
        thinking += event.thinking or ""
        calls += event.tool_calls or []
    if finished is None:
        raise OllamaError(500, "the engine stopped without finishing")
    output: list[JSON] = []
    if thinking:
        output.append({"id": f"rs_{response_id}", "type": "reasoning",
                       "summary": [{"type": "summary_text", "text": thinking}],
                       "encrypted_content": thinking})  # fmt: skip
    if calls:
        output += [{"id": f"fc_{response_id}_{i}", "type": "function_call", "status": "completed",
                    "call_id": c.get("id"), "name": (c.get("function") or {}).get("name"),
                    "arguments": _arguments_text(c)} for i, c in enumerate(calls)]  # fmt: skip
    else:
        output.append({"id": item_id, "type": "message", "status": "completed",
                       "role": "assistant", "content": [_text_part(text)]})  # fmt: skip
    response = _response(req, response_id, "completed", output, _usage(finished), int(time.time()))
    response["completed_at"] = int(time.time())
    return response


class ResponsesEndpoint:
    """The handler of `/v1/responses`, over the emulator's chat."""

    def __init__(self, inference: InferenceEndpoints) -> None:
        self.inference = inference

    async def create(self, scope: Scope, body: bytes, send: Send) -> None:
        try:
            body = self._plain(scope, body)
            req = decoding.load(body) if body.strip() else None
            if not isinstance(req, dict):
                raise OllamaError(400, "the body must be a JSON object")
            chat = chat_request(req)
            raw, name, installed = self.inference.target(chat, kind="chat")
            job = self.inference.prepare(chat, "chat", raw, name, installed)
        except OllamaError as exc:
            await send_body(send, exc.status, JSON_TYPE, _error_body(exc.status, exc.message))
            return
        if not isinstance(job, GenerationJob):  # nothing to answer: an empty response
            await self._answer(send, req, self._empty(job))
            return
        async with contextlib.AsyncExitStack() as held:
            try:
                # `num_parallel` runs at once; more wait here, as for /api/chat
                await held.enter_async_context(self.inference.state.slot(name))
                job_events = await self.inference.events(job)
            except OllamaError as exc:  # refused before any byte (a full queue)
                await send_body(send, exc.status, JSON_TYPE, _error_body(exc.status, exc.message))
                return
            await self._answer(send, req, job_events)

    async def _answer(self, send: Send, req: JSON, job_events: AsyncIterator[Event]) -> None:
        response_id, item_id = f"resp_{_rand()}", f"msg_{_rand()}"
        if req.get("stream") is not True:
            try:
                whole = await _whole(req, response_id, item_id, job_events)
            except OllamaError as exc:
                await send_body(send, exc.status, JSON_TYPE, _error_body(exc.status, exc.message))
                return
            await send_body(send, 200, JSON_TYPE, _go_json(whole) + b"\n")
            return
        await self._stream(send, _Events(req, response_id, item_id), job_events)

    @staticmethod
    def _plain(scope: Scope, body: bytes) -> bytes:
        headers = dict(scope.get("headers") or [])
        if headers.get(b"content-encoding", b"").strip().lower() != b"zstd":
            return body
        try:
            reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body))
            with reader:
                plain = reader.read(MAX_DECOMPRESSED + 1)
        except zstandard.ZstdError as exc:
            raise OllamaError(400, "failed to decompress zstd body") from exc
        if len(plain) > MAX_DECOMPRESSED:
            raise OllamaError(400, "http: request body too large")
        return bytes(plain)

    @staticmethod
    async def _empty(reply: JSON) -> AsyncIterator[Event]:
        yield Finished(str(reply.get("done_reason") or "load"), {})

    @staticmethod
    async def _stream(send: Send, events: _Events, source: AsyncIterator[Event]) -> None:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                   (b"connection", b"keep-alive")]  # fmt: skip
        await send({"type": "http.response.start", "status": 200, "headers": headers})

        async def write(chunks: list[bytes]) -> None:
            for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})

        await write(events.opening())
        try:
            async for event in source:
                if isinstance(event, Finished):
                    await write(events.finished(event))
                    break
                await write(events.piece(event))
        except OllamaError:
            pass  # as Ollama: the stream ends here, without response.completed
        await send({"type": "http.response.body", "body": b"", "more_body": False})
