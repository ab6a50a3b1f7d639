"""Anthropic Messages requests as the core's chat runs (Ollama's `/api/chat`).

What Ollama's own Anthropic layer does (`anthropic/anthropic.go`), with one aim added: in a
long agent session (Claude Code) each turn's prompt must be a growing prefix of the next,
so that the backend that served turn N reads only the new tokens of turn N+1 from its
prompt cache. So the translation is a pure function of the request, deterministic, and
places everything where it was sent:

- content is normalised (a string is one text block; text blocks are concatenated, as
  Ollama does); `cache_control`, `citations`, signatures and other fields the backend
  cannot use are ignored;
- the system prompt is the text of `system` (and of `role: "system"` messages before the
  first turn), less a first block starting with `x-anthropic-billing-header:`, which
  Claude Code puts there with a hash that changes from one conversation to the next;
- a `role: "system"` message after the first turn (Claude Code's environment message and
  its `<total_tokens>` notes) becomes, in place, a user message wrapped in
  `<system-reminder>...</system-reminder>`; templates that gather every system message at
  the top (or keep only the first) would otherwise rewrite the start of the prompt, or
  drop it;
- `tool_result` blocks become `tool` messages, in order, before the text of their user
  message; `tool_use` blocks the assistant's `tool_calls`;
- tools marked `defer_loading` (Claude Code's tool search) are offered once a
  `tool_reference` block has loaded them, after the others, in the order they were
  loaded; until then the model only knows their names, as with Anthropic.

Fields Claude Code sends that have no meaning here are accepted and ignored
(`context_management`, `safeguards`, `metadata`, `thinking.display`, unknown top-level
fields): a 400 would make it retry with ever more degraded requests. What is really wrong
(a missing `max_tokens`, an unknown block type, a bad image) is a 400 naming the field.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.api.common.errors import ApiError
from app.ollama.options import RequestPlan

__all__ = [
    "BILLING_HEADER",
    "ChatInput",
    "CountTokensRequest",
    "MessagesRequest",
    "chat_input",
    "chat_plan",
    "estimate_tokens",
    "invalid",
    "session_of",
]

BILLING_HEADER = "x-anthropic-billing-header:"
"""The start of the first system block Claude Code sends (`cc_version=...; ...`)."""
REMINDER = "<system-reminder>\n{}\n</system-reminder>"
"""How a system message after the first turn is said to the model, in place."""
EFFORTS = {"low": "low", "medium": "medium", "high": "high", "max": "max", "xhigh": "high"}
"""`output_config.effort` as Ollama's `think` level (Ollama maps `xhigh` to `high`)."""
SESSION_HEADERS = ("x-claude-code-session-id", "x-session-affinity")
MAX_SESSION_CHARS = 200


class _Conversation(BaseModel):
    """What `/v1/messages` and `/v1/messages/count_tokens` share; unknown fields are
    accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=512)
    messages: list[Any] = Field(min_length=1)
    system: str | list[Any] | None = None
    tools: list[Any] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None


class MessagesRequest(_Conversation):
    max_tokens: int = Field(ge=1)
    stream: bool = False
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    metadata: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None
    output_format: dict[str, Any] | None = None


class CountTokensRequest(_Conversation):
    pass


def invalid(message: str) -> ApiError:
    return ApiError(400, "Invalid request", message)


# -- content ------------------------------------------------------------------------------


def _blocks(content: Any, where: str) -> list[Mapping[str, Any]]:
    """`content` as blocks: a string is one text block."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise invalid(f"{where}: must be a string or a list of content blocks")
    for j, block in enumerate(content):
        if not isinstance(block, Mapping) or not isinstance(block.get("type"), str):
            raise invalid(f"{where}.{j}: must be a content block (an object with a type)")
    return content


def _string(block: Mapping[str, Any], key: str, where: str) -> str:
    value = block.get(key)
    if not isinstance(value, str):
        raise invalid(f"{where}.{key}: must be a string")
    return value


def _texts(blocks: Sequence[Mapping[str, Any]], where: str) -> str:
    """The text of blocks that may only be text (system prompts)."""
    texts = []
    for j, block in enumerate(blocks):
        if block["type"] != "text":
            raise invalid(f"{where}.{j}.type: only text blocks may be here, not {block['type']!r}")
        texts.append(_string(block, "text", f"{where}.{j}"))
    return "".join(texts)


def _image(block: Mapping[str, Any], where: str) -> str:
    """An image block's base64 data, as Ollama takes images."""
    source = block.get("source")
    if not isinstance(source, Mapping):
        raise invalid(f"{where}.source: an image needs a source")
    if source.get("type") != "base64":
        raise invalid(
            f"{where}.source.type: invalid image source type: {source.get('type')}. "
            "Only base64 images are supported."
        )
    data = _string(source, "data", f"{where}.source")
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid(f"{where}.source.data: invalid base64 image data") from exc
    return data


def _document(block: Mapping[str, Any], where: str) -> str:
    """A document block's text: plain-text documents only (no PDF reader here)."""
    source = block.get("source")
    kind = source.get("type") if isinstance(source, Mapping) else None
    if isinstance(source, Mapping) and kind == "text":
        return _string(source, "data", f"{where}.source")
    if isinstance(source, Mapping) and kind == "content":
        return _texts(_blocks(source.get("content"), f"{where}.source.content"), where)
    raise invalid(
        f"{where}.source.type: only text documents are supported (source type 'text' or "
        f"'content'), not {kind!r}"
    )


def _search_result(block: Mapping[str, Any], where: str) -> str:
    return _texts(_blocks(block.get("content"), f"{where}.content"), f"{where}.content")


# -- messages -----------------------------------------------------------------------------


@dataclass
class ChatInput:
    """A request's conversation as the core's chat run takes it."""

    messages: list[dict[str, Any]]
    """Ollama `/api/chat` messages."""
    tools: list[dict[str, Any]]
    """Ollama tools (`{"type": "function", "function": {...}}`)."""
    prompt: str
    """The last user message's own text: what the stored run shows as its prompt."""


@dataclass
class _Reading:
    """What reading the messages in order gathers."""

    out: list[dict[str, Any]] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)
    """Tool names by `tool_use` id, for the `tool_name` of their results."""
    loaded: list[str] = field(default_factory=list)
    """Deferred tools loaded by `tool_reference` blocks, in order."""
    prompt: str = ""


def _tool_result(block: Mapping[str, Any], where: str, reading: _Reading) -> dict[str, Any]:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise invalid(f"{where}.tool_use_id: a tool_result needs the id of its tool_use")
    content = block.get("content")
    texts: list[str] = []
    images: list[str] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for k, part in enumerate(_blocks(content, f"{where}.content")):
            at, kind = f"{where}.content.{k}", part["type"]
            if kind == "text":
                texts.append(_string(part, "text", at))
            elif kind == "image":
                images.append(_image(part, at))
            elif kind == "document":
                texts.append(_document(part, at))
            elif kind == "search_result":
                texts.append(_search_result(part, at))
            elif kind == "tool_reference":
                name = _string(part, "tool_name", at)
                reading.loaded.append(name)
                texts.append(f"Tool loaded: {name}\n")
            else:
                raise invalid(f"{at}.type: unknown tool_result content type {kind!r}")
    elif content is not None:
        raise invalid(f"{where}.content: must be a string or a list of content blocks")
    message: dict[str, Any] = {"role": "tool", "content": "".join(texts), "tool_call_id": call_id}
    if call_id in reading.names:
        message["tool_name"] = reading.names[call_id]
    if images:
        message["images"] = images
    return message


def _user(blocks: Sequence[Mapping[str, Any]], where: str, reading: _Reading) -> None:
    """A user message: its tool results as tool messages, then its text and images."""
    texts: list[str] = []
    images: list[str] = []
    results: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        at, kind = f"{where}.{j}", block["type"]
        if kind == "text":
            texts.append(_string(block, "text", at))
        elif kind == "image":
            images.append(_image(block, at))
        elif kind == "document":
            texts.append(_document(block, at))
        elif kind == "search_result":
            texts.append(_search_result(block, at))
        elif kind == "tool_result":
            results.append(_tool_result(block, at, reading))
        elif kind in ("thinking", "redacted_thinking", "tool_use", "server_tool_use"):
            raise invalid(f"{at}.type: {kind!r} blocks belong in assistant messages")
        else:
            raise invalid(f"{at}.type: unknown content block type {kind!r}")
    reading.out += results
    text = "".join(texts)
    if text or images:
        message: dict[str, Any] = {"role": "user", "content": text}
        if images:
            message["images"] = images
        reading.out.append(message)
        reading.prompt = text or reading.prompt
    elif not results:
        raise invalid(f"{where}: a user message must not be empty")


def _call(block: Mapping[str, Any], where: str, reading: _Reading) -> dict[str, Any]:
    call_id, name = block.get("id"), block.get("name")
    if not isinstance(call_id, str) or not call_id:
        raise invalid(f"{where}.id: a tool_use block needs its id")
    if not isinstance(name, str) or not name:
        raise invalid(f"{where}.name: a tool_use block needs the tool's name")
    arguments = block.get("input", {})
    if not isinstance(arguments, Mapping):
        raise invalid(f"{where}.input: must be an object")
    reading.names[call_id] = name
    return {"id": call_id, "function": {"name": name, "arguments": dict(arguments)}}


def _assistant(blocks: Sequence[Mapping[str, Any]], where: str, reading: _Reading) -> None:
    """An assistant message: its text, thinking and tool calls (empty: left out)."""
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    after: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        at, kind = f"{where}.{j}", block["type"]
        if kind == "text":
            texts.append(_string(block, "text", at))
        elif kind == "thinking":
            thinking.append(_string(block, "thinking", at))
        elif kind == "redacted_thinking":
            continue  # encrypted by Anthropic: nothing a local model can read
        elif kind in ("tool_use", "server_tool_use"):
            calls.append(_call(block, at, reading))
        elif kind == "web_search_tool_result":
            call_id = _string(block, "tool_use_id", at)
            content = block.get("content")
            text = content if isinstance(content, str) else json.dumps(content)
            after.append({"role": "tool", "content": text, "tool_call_id": call_id})
        else:
            raise invalid(f"{at}.type: unknown content block type {kind!r}")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if thinking:
        message["thinking"] = "".join(thinking)
    if calls:
        message["tool_calls"] = calls
    if message["content"] or thinking or calls:
        reading.out.append(message)
    reading.out += after


def _system(system: str | list[Any] | None) -> str:
    """The `system` field's text, less Claude Code's billing block."""
    if system is None:
        return ""
    blocks = _blocks(system, "system")
    if isinstance(system, list) and blocks:
        first = blocks[0].get("text")
        if isinstance(first, str) and first.startswith(BILLING_HEADER):
            blocks = blocks[1:]
    return _texts(blocks, "system")


def _tools(
    tools: Sequence[Any] | None, choice: Mapping[str, Any] | None, loaded: Sequence[str]
) -> list[dict[str, Any]]:
    """The tools offered to the model (see the module doc for deferred tools)."""
    eager: list[dict[str, Any]] = []
    deferred: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools or []):
        where = f"tools.{i}"
        if not isinstance(tool, Mapping):
            raise invalid(f"{where}: must be an object")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise invalid(
                f"{where}.type: {kind!r} tools are not supported here (only custom tools: "
                "name, description, input_schema)"
            )
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise invalid(f"{where}.name: a tool needs a name")
        schema = tool.get("input_schema")
        if not isinstance(schema, Mapping):
            raise invalid(f"{where}.input_schema: a tool needs an input_schema object")
        function: dict[str, Any] = {"name": name}
        description = tool.get("description")
        if description is not None:
            if not isinstance(description, str):
                raise invalid(f"{where}.description: must be a string")
            function["description"] = description
        function["parameters"] = dict(schema)
        converted = {"type": "function", "function": function}
        if tool.get("defer_loading") is True:
            deferred[name] = converted
        else:
            eager.append(converted)
    offered = eager + [deferred[name] for name in dict.fromkeys(loaded) if name in deferred]
    if choice is not None:
        kind = choice.get("type")
        if kind not in ("auto", "any", "tool", "none"):
            raise invalid("tool_choice.type: must be 'auto', 'any', 'tool' or 'none'")
        if kind == "tool":
            wanted = choice.get("name")
            if not any(t["function"]["name"] == wanted for t in offered):
                raise invalid(f"tool_choice.name: no tool named {wanted!r} is offered")
        if kind == "none":
            return []
    return offered


def chat_input(body: _Conversation) -> ChatInput:
    """The request's conversation as Ollama chat messages and tools (see the module doc)."""
    system = [_system(body.system)]
    reading = _Reading()
    started = False
    for i, message in enumerate(body.messages):
        where = f"messages.{i}"
        if not isinstance(message, Mapping):
            raise invalid(f"{where}: must be an object with a role and content")
        role = message.get("role")
        if role not in ("user", "assistant", "system"):
            raise invalid(f"{where}.role: must be 'user' or 'assistant', not {role!r}")
        blocks = _blocks(message.get("content"), f"{where}.content")
        if role == "system":
            text = _texts(blocks, f"{where}.content")
            if not started:
                system.append(text)
            elif text:
                reading.out.append({"role": "user", "content": REMINDER.format(text)})
            continue
        started = True
        if role == "user":
            _user(blocks, f"{where}.content", reading)
        else:
            _assistant(blocks, f"{where}.content", reading)
    text = "\n\n".join(part for part in system if part)
    messages = [{"role": "system", "content": text}] if text else []
    messages += reading.out
    if not any(m["role"] != "system" for m in messages):
        raise invalid("messages: the conversation has no user or assistant turn")
    return ChatInput(messages, _tools(body.tools, body.tool_choice, reading.loaded), reading.prompt)


# -- options ------------------------------------------------------------------------------


def _think(body: MessagesRequest) -> bool | str | None:
    """Ollama's `think`: `thinking.type` enabled/disabled, else `output_config.effort` as
    a level (Claude Code sends `adaptive` with an effort); None leaves it to the model."""
    thinking = body.thinking
    if thinking is not None:
        kind = thinking.get("type")
        if kind == "enabled":
            budget = thinking.get("budget_tokens")
            if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int)):
                raise invalid("thinking.budget_tokens: must be an integer")
            return True
        if kind == "disabled":
            return False
        if kind != "adaptive":
            raise invalid("thinking.type: must be 'enabled', 'disabled' or 'adaptive'")
    effort = (body.output_config or {}).get("effort")
    if isinstance(effort, str):
        return EFFORTS.get(effort.strip().lower())
    return None


def _format(body: MessagesRequest) -> dict[str, Any] | None:
    """A JSON schema the answer must follow (`output_config.format`, or the beta
    `output_format`), as Ollama's `format`."""
    wanted = (body.output_config or {}).get("format") or body.output_format
    if wanted is None:
        return None
    if not isinstance(wanted, Mapping) or wanted.get("type") != "json_schema":
        raise invalid("output_config.format.type: only 'json_schema' is supported")
    schema = wanted.get("schema")
    if not isinstance(schema, Mapping):
        raise invalid("output_config.format.schema: must be a JSON schema object")
    return dict(schema)


def chat_plan(body: MessagesRequest, tools: list[dict[str, Any]]) -> RequestPlan:
    """The run's options (`max_tokens` is `num_predict`, `stop_sequences` `stop`), tools,
    `think` (dropped by the core for a model that cannot think) and format."""
    options: dict[str, Any] = {"num_predict": body.max_tokens}
    if body.temperature is not None:
        options["temperature"] = body.temperature
    if body.top_p is not None:
        options["top_p"] = body.top_p
    if body.top_k is not None:
        options["top_k"] = body.top_k
    if body.stop_sequences:
        options["stop"] = list(body.stop_sequences)
    plan = RequestPlan(options=options, stream=body.stream, relax_think=True)
    plan.format = _format(body)
    if tools:
        plan.extra["tools"] = tools
    think = _think(body)
    if think is not None:
        plan.extra["think"] = think
    return plan


def session_of(headers: Mapping[str, str], metadata: Mapping[str, Any] | None) -> str | None:
    """The client's name for its conversation, a routing hint: Claude Code's
    `X-Claude-Code-Session-Id` (also in `metadata.user_id`, a JSON string with a
    `session_id`), or an `x-session-affinity` header."""
    found = headers.get(SESSION_HEADERS[0])
    if not found and metadata is not None:
        user_id = metadata.get("user_id")
        if isinstance(user_id, str) and user_id.startswith("{"):
            try:
                data = json.loads(user_id)
            except ValueError:
                data = None
            if isinstance(data, dict) and isinstance(data.get("session_id"), str):
                found = data["session_id"]
    if not found:
        found = headers.get(SESSION_HEADERS[1])
    return found[:MAX_SESSION_CHARS] if found else None


# -- counting -----------------------------------------------------------------------------


def estimate_tokens(chat: ChatInput) -> int:
    """Input tokens as Ollama estimates them (characters / 4, at least 1), over what the
    gateway sends: the messages' roles, text, thinking and tool calls, and the tools."""
    chars = 0
    for message in chat.messages:
        chars += len(message["role"]) + len(message.get("content") or "")
        chars += len(message.get("thinking") or "")
        if message.get("tool_calls"):
            chars += len(json.dumps(message["tool_calls"]))
    chars += sum(len(json.dumps(tool)) for tool in chat.tools)
    return max(1, chars // 4)
