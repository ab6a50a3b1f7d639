"""A Responses API request in Ollama's terms: input items to chat messages, tools to
Ollama's tools, the sampling fields to a `RequestPlan`.

The translation is deterministic and ignores item ids, so a client that sends its whole
history every turn (Codex does) gets a prompt that grows by appending: the messages of
turn N are a prefix of those of turn N+1, and a backend's prompt cache holds. To keep it so:

- `instructions` and the developer/system messages before the first other item make the
  system prompt; a developer/system message later in the conversation becomes a user
  message wrapped in `<system-reminder>`, where it is (a second system message would be
  moved to the top, or dropped, by many chat templates, rewriting the prompt's start);
- a `reasoning` item gives the next assistant message its thinking back, exactly, from its
  `encrypted_content` (see `app.api.openai.responses.thinking`);
- a `function_call` joins the assistant message before it, as the model wrote them in one
  turn.

Namespaced tools (`{"type": "namespace", "name": ns, "tools": [...]}`, as Codex sends them)
are flattened for Ollama as `ns.member`; calls of them are split back (`ToolNames`). Tools
Ollama cannot run (`web_search` and the other hosted tools) are left out. Pure functions;
bad input raises `invalid(...)` naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.api.openai.responses.request import ResponsesRequest
from app.api.openai.responses.thinking import decode_thinking
from app.api.openai.translate import REASONING_EFFORT, invalid
from app.ollama.options import RequestPlan

__all__ = [
    "Conversation",
    "ToolNames",
    "common_prefix",
    "conversation",
    "plan_of",
    "tools_of",
]

REMINDER = "<system-reminder>\n{}\n</system-reminder>"
"""How a developer or system message after the start of a conversation is said to the model."""

SKIPPED_ITEMS = frozenset({"web_search_call"})
"""Items of tools the gateway does not run: history for the client, nothing for the model."""

IMAGE_URLS = "image URLs are not currently supported, please use base64 encoded data instead"


@dataclass
class Conversation:
    """A request's input as Ollama chat messages: the system prompt apart (it goes in front
    of the messages, see `RunSpec.payload`), then the messages."""

    system: str | None
    messages: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ToolNames:
    """Ollama's flat function names of namespaced tools, and the way back."""

    members: dict[str, tuple[str, str]] = field(default_factory=dict)
    """`ns.member` -> (member, ns)."""

    @staticmethod
    def flat(name: str, namespace: str | None) -> str:
        if not namespace or name.startswith(namespace + "."):
            return name
        return f"{namespace}.{name}"

    def split(self, flat: str) -> tuple[str, str | None]:
        """(name, namespace) of a function the model called."""
        return self.members.get(flat, (flat, None))


# -- input items ---------------------------------------------------------------------------


def _text_and_images(parts: Any, where: str) -> tuple[str, list[str]]:
    """A message's content (a string or content parts): its text and base64 images."""
    if isinstance(parts, str):
        return parts, []
    if parts is None:
        return "", []
    if not isinstance(parts, list):
        raise invalid(f"{where}.content must be a string or a list of content parts")
    texts: list[str] = []
    images: list[str] = []
    for j, part in enumerate(parts):
        at = f"{where}.content[{j}]"
        if not isinstance(part, Mapping):
            raise invalid(f"{at} must be an object")
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            text = part.get("text")
            if not isinstance(text, str):
                raise invalid(f"{at}.text must be a string")
            texts.append(text)
        elif kind == "refusal":
            texts.append(str(part.get("refusal") or ""))
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise invalid(
                    f"{at}: only images given as base64 data URLs (image_url) are supported"
                )
            images.append(_image_data(url, at))
        elif kind == "input_file":
            raise invalid(f"{at}: file inputs are not currently supported")
        else:
            raise invalid(f"{at}: unknown content type: {kind}")
    return "".join(texts), images


def _image_data(url: str, where: str) -> str:
    if not url.startswith("data:"):
        raise invalid(f"{where}: {IMAGE_URLS}")
    header, _, data = url.partition(",")
    if not header.endswith(";base64") or not data:
        raise invalid(f"{where}: an image must be a base64 data URL (data:image/png;base64,...)")
    return data


def _arguments(raw: Any, where: str) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    if isinstance(raw, Mapping):
        return dict(raw)
    if not isinstance(raw, str):
        raise invalid(f"{where}.arguments must be a JSON string")
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise invalid(f"{where}.arguments is not valid JSON") from exc
    if not isinstance(value, dict):
        raise invalid(f"{where}.arguments must be a JSON object")
    return value


def _required_str(item: Mapping[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise invalid(f"{where}.{key} is required")
    return value


class _Builder:
    """Messages built item by item (see the module doc for the rules)."""

    def __init__(self, system: str | None) -> None:
        self.system_parts = [system] if system else []
        self.messages: list[dict[str, Any]] = []
        self.thinking: str | None = None
        """A reasoning item's thinking, waiting for the assistant message it belongs to."""
        self.call_names: dict[str, str] = {}

    @property
    def started(self) -> bool:
        return bool(self.messages) or self.thinking is not None

    def assistant(self) -> dict[str, Any]:
        """The assistant message a tool call joins: the last message if it is the
        assistant's (and no thinking waits for a new one), else a new one."""
        last = self.messages[-1] if self.messages else None
        if last is not None and last["role"] == "assistant" and self.thinking is None:
            return last
        message: dict[str, Any] = {"role": "assistant", "content": ""}
        self._think(message)
        self.messages.append(message)
        return message

    def _think(self, message: dict[str, Any]) -> None:
        if self.thinking is not None:
            message["thinking"] = self.thinking
            self.thinking = None

    def message(self, item: Mapping[str, Any], where: str) -> None:
        role = item.get("role")
        text, images = _text_and_images(item.get("content"), where)
        if role in ("system", "developer"):
            if not self.started:
                self.system_parts.append(text)
            else:
                self.messages.append({"role": "user", "content": REMINDER.format(text)})
            return
        if role not in ("user", "assistant"):
            raise invalid(
                f"{where}.role must be user, assistant, system or developer, got {role!r}"
            )
        message: dict[str, Any] = {"role": role, "content": text}
        if images:
            message["images"] = images
        if role == "assistant":
            self._think(message)
        self.messages.append(message)

    def call(self, call_id: str, name: str, arguments: dict[str, Any]) -> None:
        message = self.assistant()
        message.setdefault("tool_calls", []).append(
            {"id": call_id, "function": {"name": name, "arguments": arguments}}
        )
        self.call_names[call_id] = name

    def result(self, call_id: str, output: Any, where: str) -> None:
        text, images = _text_and_images(output, where.replace(".content", "") + ".output")
        message: dict[str, Any] = {"role": "tool", "content": text, "tool_call_id": call_id}
        if images:
            message["images"] = images
        if call_id in self.call_names:
            message["tool_name"] = self.call_names[call_id]
        self.messages.append(message)

    def finish(self) -> Conversation:
        if self.thinking is not None:  # reasoning last: an assistant turn of thinking only
            self.messages.append({"role": "assistant", "content": "", "thinking": self.thinking})
            self.thinking = None
        return Conversation("\n\n".join(self.system_parts) or None, self.messages)


def _reasoning_text(item: Mapping[str, Any]) -> str:
    encrypted = item.get("encrypted_content")
    if isinstance(encrypted, str) and encrypted:
        return decode_thinking(encrypted)
    for key, kind in (("content", "reasoning_text"), ("summary", "summary_text")):
        parts = item.get(key)
        if isinstance(parts, list) and parts:
            return "".join(
                str(p.get("text") or "")
                for p in parts
                if isinstance(p, Mapping) and p.get("type") == kind
            )
    return ""


def conversation(
    instructions: str | None,
    items: Sequence[Any],
    names: ToolNames | None = None,
    *,
    first_input: int = 0,
) -> Conversation:
    """`instructions` and the input `items` as a system prompt and Ollama chat messages.

    `first_input`: where the request's own input starts in `items` (the items before it are
    a stored conversation's), so that an error names the item as the request numbers it."""
    names = names or ToolNames()
    built = _Builder(instructions)
    for i, item in enumerate(items):
        where = f"input[{i - first_input}]"
        if not isinstance(item, Mapping):
            raise invalid(f"{where} must be an object")
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            built.message(item, where)
        elif kind == "function_call":
            name = _required_str(item, "name", where)
            namespace = item.get("namespace") if isinstance(item.get("namespace"), str) else None
            built.call(
                _required_str(item, "call_id", where),
                names.flat(name, namespace),
                _arguments(item.get("arguments"), where),
            )
        elif kind == "custom_tool_call":
            built.call(
                _required_str(item, "call_id", where),
                _required_str(item, "name", where),
                {"input": str(item.get("input") or "")},
            )
        elif kind == "local_shell_call":
            call_id = item.get("call_id") or item.get("id")
            if not isinstance(call_id, str) or not call_id:
                raise invalid(f"{where}.call_id is required")
            action = item.get("action")
            built.call(call_id, "local_shell", dict(action) if isinstance(action, Mapping) else {})
        elif kind in ("function_call_output", "custom_tool_call_output"):
            built.result(_required_str(item, "call_id", where), item.get("output"), where)
        elif kind == "local_shell_call_output":
            call_id = item.get("call_id") or item.get("id")
            if not isinstance(call_id, str) or not call_id:
                raise invalid(f"{where}.call_id is required")
            built.result(call_id, item.get("output"), where)
        elif kind == "reasoning":
            built.thinking = _reasoning_text(item)
        elif kind in SKIPPED_ITEMS:
            continue
        elif kind is None:
            raise invalid(f"{where}: input item missing required 'type' field")
        else:
            raise invalid(f'{where}: unknown input item type: "{kind}"')
    return built.finish()


def common_prefix(a: Sequence[Any], b: Sequence[Any]) -> int:
    """How many leading elements `a` and `b` share."""
    n = 0
    for left, right in zip(a, b, strict=False):
        if left != right:
            break
        n += 1
    return n


# -- tools and options -----------------------------------------------------------------


def _function(tool: Mapping[str, Any], where: str, namespace: str | None) -> dict[str, Any]:
    name = _required_str(tool, "name", where)
    function: dict[str, Any] = {"name": ToolNames.flat(name, namespace)}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    parameters = tool.get("parameters")
    if parameters is not None:
        if not isinstance(parameters, Mapping):
            raise invalid(f"{where}.parameters must be a JSON schema object")
        function["parameters"] = dict(parameters)
    return {"type": "function", "function": function}


def _flatten(
    tool: Mapping[str, Any], where: str, names: ToolNames, namespace: str | None = None
) -> list[dict[str, Any]]:
    kind = tool.get("type")
    if kind == "function":
        flat = _function(tool, where, namespace)
        if namespace:
            names.members[flat["function"]["name"]] = (str(tool["name"]), namespace)
        return [flat]
    if kind == "namespace":
        inner = _required_str(tool, "name", where)
        prefix = f"{namespace}.{inner}" if namespace else inner
        members = tool.get("tools")
        if not isinstance(members, list):
            raise invalid(f"{where}.tools must be a list of functions")
        out: list[dict[str, Any]] = []
        for j, member in enumerate(members):
            if not isinstance(member, Mapping):
                raise invalid(f"{where}.tools[{j}] must be an object")
            out += _flatten(member, f"{where}.tools[{j}]", names, prefix)
        return out
    return []  # hosted tools (web_search, file_search, ...): nothing Ollama can run


def tools_of(body: ResponsesRequest) -> tuple[list[dict[str, Any]], ToolNames]:
    """The request's tools as Ollama's (as far as `tool_choice` allows), and their names."""
    names = ToolNames()
    tools: list[dict[str, Any]] = []
    for i, tool in enumerate(body.tools or []):
        if not isinstance(tool, Mapping):
            raise invalid(f"tools[{i}] must be an object")
        tools += _flatten(tool, f"tools[{i}]", names)
    choice = body.tool_choice
    if choice == "none":
        return [], names
    allowed: set[str] | None = None
    if isinstance(choice, Mapping):
        if choice.get("type") == "function" and isinstance(choice.get("name"), str):
            allowed = {ToolNames.flat(choice["name"], choice.get("namespace"))}
        elif choice.get("type") == "allowed_tools" and isinstance(choice.get("tools"), list):
            allowed = {
                ToolNames.flat(str(t.get("name")), t.get("namespace"))
                for t in choice["tools"]
                if isinstance(t, Mapping)
            }
    if allowed is not None:
        tools = [t for t in tools if t["function"]["name"] in allowed]
    return tools, names


def plan_of(body: ResponsesRequest, tools: list[dict[str, Any]], system: str | None) -> RequestPlan:
    """The run's options and request fields: only what the request sets (the model's own
    defaults otherwise)."""
    options: dict[str, Any] = {}
    if body.temperature is not None:
        options["temperature"] = body.temperature
    if body.top_p is not None:
        options["top_p"] = body.top_p
    if body.max_output_tokens is not None:
        options["num_predict"] = body.max_output_tokens
    plan = RequestPlan(options=options, system=system, stream=body.stream)
    fmt = body.text.format if body.text is not None else None
    if fmt is not None and fmt.type == "json_object":
        plan.format = "json"
    elif fmt is not None and fmt.type == "json_schema":
        if not isinstance(fmt.schema_, dict):
            raise invalid("text.format.schema must be a JSON schema object")
        plan.format = fmt.schema_
    if tools:
        plan.extra["tools"] = tools
    effort = body.reasoning.effort if body.reasoning is not None else None
    if effort is not None:
        if effort not in REASONING_EFFORT:
            raise invalid(
                f"invalid reasoning value: {effort!r} (reasoning.effort: "
                f"{', '.join(REASONING_EFFORT)})"
            )
        plan.extra["think"] = REASONING_EFFORT[effort]
    return plan
