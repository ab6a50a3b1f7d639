"""Translation between the OpenAI API's shapes and the core's runs.

Requests become a `RequestPlan` and Ollama chat messages (what Ollama's own `/v1` layer
does, see `shared/reference/ollama-api.md` section 8), so any Ollama version behind the
pool works; results and streamed chunks become OpenAI objects. Pure functions: the
routes in `app.api.openai.routes` do the I/O.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import struct
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.common.errors import ApiError
from app.ollama.options import RequestPlan
from app.ollama.types import ModelExecutionResult

FINGERPRINT = "fp_ollama"
REASONING_EFFORT = {"none": False, "minimal": "low", "low": "low", "medium": "medium",
                    "high": "high", "max": "max", "xhigh": "max", "ultra": "max"}  # fmt: skip


class StreamOptions(BaseModel):
    include_usage: bool = False


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class _Sampling(BaseModel):
    """Fields both completion endpoints take; unknown fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=512)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    n: int = Field(default=1, ge=1, le=1, description="Only one choice is generated.")

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def options(self, max_tokens: int | None) -> dict[str, Any]:
        options: dict[str, Any] = {
            # Ollama's OpenAI layer uses OpenAI's defaults, not the model's.
            "temperature": 1.0 if self.temperature is None else self.temperature,
            "top_p": 1.0 if self.top_p is None else self.top_p,
        }
        if max_tokens is not None:
            options["num_predict"] = max_tokens
        if self.seed is not None:
            options["seed"] = self.seed
        if self.stop is not None:
            options["stop"] = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if self.frequency_penalty is not None:
            options["frequency_penalty"] = self.frequency_penalty
        if self.presence_penalty is not None:
            options["presence_penalty"] = self.presence_penalty
        return options


SESSION_HEADER = "x-session-affinity"
"""A client's name for its conversation (opencode sends it), like `prompt_cache_key`."""


class ChatCompletionRequest(_Sampling):
    messages: list[dict[str, Any]] = Field(max_length=500)
    prompt_cache_key: str | None = Field(
        default=None,
        max_length=1024,
        description="The client's name for its conversation: the gateway sends its turns "
        "where their prompt is cached (a routing signal only).",
    )
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    reasoning_effort: str | None = None


class CompletionRequest(_Sampling):
    prompt: str = Field(min_length=1)
    suffix: str | None = None


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=512)
    input: str | list[str]
    dimensions: int | None = Field(default=None, ge=1)
    encoding_format: str = "float"


def invalid(message: str) -> ApiError:
    return ApiError(400, "Invalid request", message)


# -- requests ---------------------------------------------------------------------------


def _images(parts: Sequence[Any]) -> tuple[str, list[str]]:
    texts: list[str] = []
    images: list[str] = []
    for part in parts:
        if not isinstance(part, Mapping):
            raise invalid("each content part must be an object")
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("text") or ""))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, Mapping) else image
            if not isinstance(url, str) or not url.startswith("data:") or "," not in url:
                raise invalid(
                    "image URLs are not currently supported, please use base64 encoded data instead"
                )
            images.append(url.split(",", 1)[1])
        else:
            raise invalid(f"invalid message content type: {kind}")
    return "\n".join(texts), images


def chat_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI chat messages as Ollama's: content parts joined, images inlined as base64,
    tool calls with decoded arguments, tool results named after their call."""
    if not messages:
        raise invalid("[] is too short - 'messages'")
    call_names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role = message.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant", "tool"):
            raise invalid(f"messages[{i}].role: invalid role {role!r}")
        content = message.get("content")
        converted: dict[str, Any] = {"role": role}
        if isinstance(content, list):
            converted["content"], images = _images(content)
            if images:
                converted["images"] = images
        elif content is None or isinstance(content, str):
            converted["content"] = content or ""
        else:
            raise invalid(f"messages[{i}].content must be a string or a list of parts")
        calls = message.get("tool_calls")
        if role == "assistant" and isinstance(calls, list) and calls:
            converted["tool_calls"] = [_ollama_call(call, i) for call in calls]
            for call in calls:
                if isinstance(call, Mapping) and isinstance(call.get("id"), str):
                    call_names[call["id"]] = str((call.get("function") or {}).get("name", ""))
        if role == "tool":
            call_id = message.get("tool_call_id")
            if isinstance(call_id, str):
                converted["tool_call_id"] = call_id
                if call_id in call_names:
                    converted["tool_name"] = call_names[call_id]
        out.append(converted)
    return out


def _ollama_call(call: Any, index: int) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise invalid(f"messages[{index}].tool_calls: each call needs function.name")
    arguments = function.get("arguments") or "{}"
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError as exc:
            raise invalid(f"messages[{index}].tool_calls: arguments are not JSON") from exc
    return {"function": {"name": function["name"], "arguments": arguments}}


def chat_plan(body: ChatCompletionRequest) -> RequestPlan:
    plan = RequestPlan(
        options=body.options(body.max_completion_tokens or body.max_tokens), stream=body.stream
    )
    if body.response_format is not None:
        if body.response_format.type == "json_object":
            plan.format = "json"
        elif body.response_format.type == "json_schema":
            schema = (body.response_format.json_schema or {}).get("schema")
            if not isinstance(schema, dict):
                raise invalid("response_format.json_schema.schema must be an object")
            plan.format = schema
    if body.tools:
        plan.extra["tools"] = body.tools
    effort = body.reasoning_effort
    if effort is None and isinstance(getattr(body, "reasoning", None), Mapping):
        effort = body.reasoning.get("effort")  # type: ignore[attr-defined]
    if effort is not None:
        if effort not in REASONING_EFFORT:
            raise invalid(f"invalid reasoning value: {effort!r}")
        plan.extra["think"] = REASONING_EFFORT[effort]
    return plan


def completion_plan(body: CompletionRequest) -> RequestPlan:
    plan = RequestPlan(options=body.options(body.max_tokens), stream=body.stream)
    if body.suffix:
        plan.extra["suffix"] = body.suffix
    return plan


# -- replies ------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def usage(result: ModelExecutionResult) -> dict[str, int]:
    meta = result.metadata or {}
    prompt = int(meta.get("prompt_eval_count") or 0)
    completion = int(meta.get("eval_count") or result.tokens_used or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}  # fmt: skip


def openai_tool_calls(calls: Sequence[Any]) -> list[dict[str, Any]]:
    out = []
    for index, call in enumerate(calls):
        function = call.get("function", {}) if isinstance(call, Mapping) else {}
        arguments = function.get("arguments", {})
        out.append(
            {
                "id": f"call_{secrets.token_hex(6)}",
                "index": index,
                "type": "function",
                "function": {
                    "name": function.get("name", ""),
                    "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
                },
            }
        )
    return out


def finish_reason(result: ModelExecutionResult) -> str:
    meta = result.metadata or {}
    if meta.get("tool_calls"):
        return "tool_calls"
    return "length" if meta.get("done_reason") == "length" else "stop"


def chat_completion(model: str, result: ModelExecutionResult) -> dict[str, Any]:
    meta = result.metadata or {}
    message: dict[str, Any] = {"role": "assistant", "content": result.response}
    if meta.get("thinking"):
        message["reasoning"] = meta["thinking"]
    if meta.get("tool_calls"):
        message["tool_calls"] = openai_tool_calls(meta["tool_calls"])
    return {
        "id": new_id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(result)}],
        "usage": usage(result),
    }


def completion(model: str, result: ModelExecutionResult) -> dict[str, Any]:
    return {
        "id": new_id("cmpl"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": [
            {
                "text": result.response,
                "index": 0,
                "finish_reason": finish_reason(result),
                "logprobs": None,
            }
        ],
        "usage": usage(result),
    }


class ChunkWriter:
    """The `chat.completion.chunk` / `text_completion` objects of one stream."""

    def __init__(self, model: str, chat: bool) -> None:
        self.model = model
        self.chat = chat
        self.id = new_id("chatcmpl" if chat else "cmpl")
        self.created = int(time.time())
        self.sent_role = False

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
            **extra,
        }

    def piece(self, content: str, thinking: str | None = None) -> dict[str, Any]:
        if not self.chat:
            return self._chunk([{"text": content, "index": 0, "finish_reason": None}])
        delta: dict[str, Any] = {}
        if not self.sent_role:
            delta["role"] = "assistant"
            self.sent_role = True
        if thinking:
            delta["reasoning"] = thinking
        if content or not thinking:
            delta["content"] = content
        return self._chunk([{"index": 0, "delta": delta, "finish_reason": None}])

    def ending(self, result: ModelExecutionResult) -> list[dict[str, Any]]:
        """The closing chunks: tool calls (if any), the finish reason."""
        reason = finish_reason(result)
        if not self.chat:
            return [self._chunk([{"text": "", "index": 0, "finish_reason": reason}])]
        chunks = []
        calls = (result.metadata or {}).get("tool_calls")
        if calls:
            delta: dict[str, Any] = {"tool_calls": openai_tool_calls(calls)}
            if not self.sent_role:
                delta["role"] = "assistant"
                self.sent_role = True
            chunks.append(self._chunk([{"index": 0, "delta": delta, "finish_reason": None}]))
        chunks.append(self._chunk([{"index": 0, "delta": {}, "finish_reason": reason}]))
        return chunks

    def usage(self, result: ModelExecutionResult) -> dict[str, Any]:
        return self._chunk([], usage=usage(result))


# -- models and embeddings ----------------------------------------------------------------


def model_object(tag: Mapping[str, Any], model_id: str | None = None) -> dict[str, Any]:
    name = str(tag.get("name") or tag.get("model") or "")
    try:
        # Go writes nanoseconds; Python reads at most microseconds.
        modified = re.sub(r"(\.\d{6})\d+", r"\1", str(tag.get("modified_at")))
        created = int(datetime.fromisoformat(modified).timestamp())
    except ValueError:
        created = 0
    path = name.split(":", 1)[0].split("/")
    return {
        "id": model_id or name,
        "object": "model",
        "created": created,
        "owned_by": path[-2] if len(path) >= 2 else "library",
    }


def embedding_list(model: str, reply: Mapping[str, Any], encoding_format: str) -> dict[str, Any]:
    data = []
    for index, vector in enumerate(reply.get("embeddings") or []):
        values: Any = vector
        if encoding_format == "base64":
            values = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "embedding": values, "index": index})
    tokens = int(reply.get("prompt_eval_count") or 0)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
