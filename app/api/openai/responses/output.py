"""A run's answer as a Responses API `response`: output items, status, usage, and the
request fields a response echoes.

Output items come in two steps, so that a stored response keeps no text of its own: the
*layout* (`layout`: each item's type, id, call id and name, no text) is decided once, when
the answer ends, and is what the database keeps (`ResponseRecord.output_items`); the items
(`output_items`) fill it with the answer's text, thinking and tool calls, from the run as it
ended or from the stored run. Items are, in order: a `reasoning` item when the model
thought, a `message` when it wrote text (or called no tool), a `function_call` per call.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.api.openai.responses.request import ResponsesRequest
from app.api.openai.responses.thinking import encode_thinking
from app.api.openai.responses.translate import ToolNames
from app.ollama.metadata import run_metadata
from app.ollama.types import ModelExecutionResult
from app.responses import StoredTurn

__all__ = [
    "Answer",
    "echo_params",
    "layout",
    "new_id",
    "output_items",
    "response_object",
    "status_of",
    "usage_of",
]


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


@dataclass(frozen=True)
class Answer:
    """What a run answered, as the output items need it."""

    text: str
    thinking: str | None
    tool_calls: list[dict[str, Any]]
    input_tokens: int
    output_tokens: int
    done_reason: str | None = None
    error: str | None = None

    @classmethod
    def of_result(cls, result: ModelExecutionResult) -> Answer:
        meta = run_metadata(result)
        calls = meta.get("tool_calls") or []
        return cls(
            text=result.response if result.success else str(meta.get("partial_response") or ""),
            thinking=meta.get("thinking") or None,
            tool_calls=[c for c in calls if isinstance(c, dict)],
            input_tokens=int(meta.get("prompt_eval_count") or 0),
            output_tokens=int(meta.get("eval_count") or result.tokens_used or 0),
            done_reason=meta.get("done_reason"),
            error=result.error_message,
        )

    @classmethod
    def of_turn(cls, turn: StoredTurn) -> Answer:
        return cls(
            text=turn.text,
            thinking=turn.thinking,
            tool_calls=turn.tool_calls,
            input_tokens=turn.input_tokens or 0,
            output_tokens=turn.output_tokens or 0,
            done_reason=turn.done_reason,
            error=turn.error,
        )


def status_of(
    success: bool, done_reason: str | None, max_output_tokens: int | None
) -> tuple[str, str | None]:
    """(status, why incomplete): `incomplete` only when the request's own
    `max_output_tokens` cut the answer (a client such as Codex fails a turn on it; a
    limit the client did not set is the model's, as Ollama reports it: `completed`)."""
    if not success:
        return "failed", None
    if done_reason == "length" and max_output_tokens is not None:
        return "incomplete", "max_output_tokens"
    return "completed", None


def layout(
    answer: Answer,
    names: ToolNames,
    *,
    incomplete: bool,
    parallel_tool_calls: bool,
    ids: Mapping[str, str] | None = None,
    order: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The output items without their text. `ids` and `order`: the ids of the reasoning
    and message items a stream has already opened, and the order it opened them in."""
    ids = ids or {}
    heads: dict[str, dict[str, Any]] = {}
    if answer.thinking:
        heads["reasoning"] = {"type": "reasoning", "id": ids.get("reasoning") or new_id("rs")}
    calls = answer.tool_calls if parallel_tool_calls else answer.tool_calls[:1]
    if answer.text or not calls:
        status = "incomplete" if incomplete else "completed"
        heads["message"] = {
            "type": "message",
            "id": ids.get("message") or new_id("msg"),
            "status": status,
        }
    kinds = [k for k in order if k in heads]
    kinds += [k for k in ("reasoning", "message") if k in heads and k not in kinds]
    items = [heads[k] for k in kinds]
    for index, call in enumerate(calls):
        function = _function_of(call)
        name, namespace = names.split(str(function.get("name") or ""))
        call_id = call.get("id")
        item: dict[str, Any] = {
            "type": "function_call",
            "id": new_id("fc"),
            "call_id": call_id if isinstance(call_id, str) and call_id else new_id("call"),
            "name": name,
            "index": index,
        }
        if namespace:
            item["namespace"] = namespace
        items.append(item)
    return items


def _function_of(call: Mapping[str, Any]) -> Mapping[str, Any]:
    function = call.get("function")
    return function if isinstance(function, Mapping) else {}


def arguments_text(call: Mapping[str, Any]) -> str:
    function = _function_of(call)
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        return arguments
    return json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))


def reasoning_item(item_id: str, thinking: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": thinking}],
        "encrypted_content": encode_thinking(thinking),
    }


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def function_item(shape: Mapping[str, Any], arguments: str, status: str) -> dict[str, Any]:
    item = {
        "id": shape["id"],
        "type": "function_call",
        "status": status,
        "call_id": shape["call_id"],
        "name": shape["name"],
        "arguments": arguments,
    }
    if shape.get("namespace"):
        item["namespace"] = shape["namespace"]
    return item


def output_items(shapes: Sequence[Mapping[str, Any]], answer: Answer) -> list[dict[str, Any]]:
    """The output items of `layout` filled with `answer`'s text, thinking and calls."""
    items: list[dict[str, Any]] = []
    for shape in shapes:
        kind = shape.get("type")
        if kind == "reasoning":
            items.append(reasoning_item(shape["id"], answer.thinking or ""))
        elif kind == "message":
            items.append(message_item(shape["id"], answer.text, str(shape.get("status"))))
        elif kind == "function_call":
            index = int(shape.get("index") or 0)
            call = answer.tool_calls[index] if index < len(answer.tool_calls) else {}
            items.append(function_item(shape, arguments_text(call), "completed"))
    return items


def usage_of(answer: Answer) -> dict[str, Any]:
    return {
        "input_tokens": answer.input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": answer.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": answer.input_tokens + answer.output_tokens,
    }


def echo_params(body: ResponsesRequest) -> dict[str, Any]:
    """The request fields a response repeats (kept with a stored response)."""
    text_format: dict[str, Any] = {"type": "text"}
    if body.text is not None and body.text.format is not None:
        text_format = body.text.format.model_dump(by_alias=True, exclude_none=True)
    reasoning = None
    if body.reasoning is not None and (body.reasoning.effort or body.reasoning.summary):
        reasoning = {"effort": body.reasoning.effort, "summary": body.reasoning.summary}
    extra = body.model_extra or {}
    return {
        "instructions": body.instructions,
        "tools": list(body.tools or []),
        "tool_choice": body.tool_choice or "auto",
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "text": {"format": text_format},
        "temperature": body.temperature,
        "top_p": body.top_p,
        "reasoning": reasoning,
        "max_output_tokens": body.max_output_tokens,
        "metadata": dict(body.metadata or {}),
        "truncation": body.truncation or "disabled",
        "prompt_cache_key": body.prompt_cache_key,
        "store": body.store,
        "user": extra.get("user") if isinstance(extra.get("user"), str) else None,
        "safety_identifier": (
            extra["safety_identifier"] if isinstance(extra.get("safety_identifier"), str) else None
        ),
    }


def response_object(
    *,
    response_id: str,
    model: str,
    params: Mapping[str, Any],
    status: str,
    created_at: int,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    previous_response_id: str | None,
    completed_at: int | None = None,
    error: str | None = None,
    incomplete_reason: str | None = None,
) -> dict[str, Any]:
    """A `response` object (`object: "response"`)."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "completed_at": completed_at,
        "status": status,
        "background": False,
        "error": {"code": "server_error", "message": error} if error is not None else None,
        "incomplete_details": (
            {"reason": incomplete_reason} if incomplete_reason is not None else None
        ),
        "instructions": params.get("instructions"),
        "max_output_tokens": params.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": params.get("parallel_tool_calls", True),
        "previous_response_id": previous_response_id,
        "prompt_cache_key": params.get("prompt_cache_key"),
        "reasoning": params.get("reasoning"),
        "safety_identifier": params.get("safety_identifier"),
        "service_tier": "default",
        "store": params.get("store", True),
        "temperature": params.get("temperature"),
        "text": params.get("text") or {"format": {"type": "text"}},
        "tool_choice": params.get("tool_choice", "auto"),
        "tools": params.get("tools") or [],
        "top_logprobs": 0,
        "top_p": params.get("top_p"),
        "truncation": params.get("truncation", "disabled"),
        "usage": usage,
        "user": params.get("user"),
        "metadata": params.get("metadata") or {},
    }
