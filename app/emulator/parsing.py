"""Reading request bodies as Ollama's handlers do: Go's type errors, option and field checks.

`parse_body` decodes a body (see `decoding.py`) and checks its fields' JSON types against
the Go struct Ollama decodes it into, with the decoder's error texts; the `check_*`
helpers check the fields Ollama checks after decoding (options, keep_alive, think, format).
"""

from __future__ import annotations

import json
import re
from typing import Any

from app.emulator import decoding
from app.emulator.errors import OllamaError, go_quote, json_type

__all__ = [
    "FIELD_TYPES",
    "check_format",
    "check_options",
    "check_think",
    "keep_alive_ns",
    "model_field",
    "parse_body",
    "parse_go_duration",
]

JSON = dict[str, Any]

INT_OPTIONS = {
    "num_keep", "seed", "num_predict", "top_k", "repeat_last_n", "num_ctx", "num_batch",
    "num_gpu", "main_gpu", "num_thread", "draft_num_predict",
}  # fmt: skip
FLOAT_OPTIONS = {
    "top_p", "min_p", "typical_p", "temperature", "repeat_penalty", "presence_penalty",
    "frequency_penalty",
}  # fmt: skip
BOOL_OPTIONS = {"use_mmap", "numa", "low_vram", "vocab_only", "use_mlock", "penalize_newline"}
THINK_LEVELS = {"high", "medium", "low", "max"}

# Go struct field types of the request bodies, for the decoder's type errors.
FIELD_TYPES: dict[str, dict[str, str]] = {
    "GenerateRequest": {
        "model": "string", "prompt": "string", "suffix": "string", "system": "string",
        "template": "string", "stream": "bool", "raw": "bool", "options": "object",
        "images": "array", "context": "array", "truncate": "bool", "shift": "bool",
        "logprobs": "bool", "top_logprobs": "int",
    },
    "ChatRequest": {
        "model": "string", "messages": "array", "tools": "array", "stream": "bool",
        "options": "object", "truncate": "bool", "shift": "bool", "logprobs": "bool",
        "top_logprobs": "int",
    },
    "EmbedRequest": {"model": "string", "truncate": "bool", "dimensions": "int",
                     "options": "object"},
    "EmbeddingRequest": {"model": "string", "prompt": "string", "options": "object"},
    "ShowRequest": {"model": "string", "name": "string", "verbose": "bool"},
    "PullRequest": {"model": "string", "name": "string", "stream": "bool", "insecure": "bool"},
    "DeleteRequest": {"model": "string", "name": "string"},
    "CopyRequest": {"source": "string", "destination": "string"},
    "WebSearchRequest": {"query": "string", "max_results": "int"},
    "WebFetchRequest": {"url": "string"},
}  # fmt: skip
_GO_ACCEPTS = {
    "string": {"string", "null"},
    "bool": {"bool", "null"},
    "int": {"number", "null"},
    "object": {"object", "null"},
    "array": {"array", "null"},
}
_GO_TYPE_NAMES = {
    "string": "string",
    "bool": "bool",
    "int": "int",
    "object": "map[string]interface {}",
    "array": "[]",
}


def parse_body(body: bytes, struct: str) -> JSON:
    """The body as a JSON object whose fields have the JSON types of Go's `api.<struct>`;
    otherwise `OllamaError(400)` with the decoder's text."""
    if not body.strip():
        raise OllamaError(400, "missing request body")
    obj = decoding.load(body)
    if not isinstance(obj, dict):
        raise OllamaError(
            400, f"json: cannot unmarshal {json_type(obj)} into Go value of type api.{struct}"
        )
    for key, go_type in FIELD_TYPES.get(struct, {}).items():
        if key not in obj:
            continue
        value = obj[key]
        kind = json_type(value)
        if kind not in _GO_ACCEPTS[go_type] or (
            go_type == "int" and isinstance(value, float) and not value.is_integer()
        ):
            raise OllamaError(
                400,
                f"json: cannot unmarshal {kind} into Go struct field "
                f"{struct}.{key} of type {_GO_TYPE_NAMES[go_type]}",
            )
    return obj


def model_field(req: JSON) -> str:
    """`model`, or the older `name`."""
    value = req.get("model") or req.get("name") or ""
    return str(value)


def check_options(options: Any) -> JSON:
    """`options` with Ollama's type checks (a wrong type is a 500, as Ollama answers)."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise OllamaError(400, "json: cannot unmarshal options")
    for key, value in options.items():
        if key in INT_OPTIONS and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise OllamaError(500, f'option "{key}" must be of type integer')
        if key in FLOAT_OPTIONS and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise OllamaError(500, f'option "{key}" must be of type float32')
        if key in BOOL_OPTIONS and not isinstance(value, bool):
            raise OllamaError(500, f'option "{key}" must be of type boolean')
        if key == "stop" and not isinstance(value, list):
            raise OllamaError(500, f'option "{key}" must be of type array')
    return options


def keep_alive_ns(value: Any) -> int | None:
    """`keep_alive` in nanoseconds (seconds as a number, or a Go duration); None if absent."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise OllamaError(400, "Unsupported type: 'bool'")
    if isinstance(value, int | float):
        return int(value * 1_000_000_000)
    if isinstance(value, str):
        return parse_go_duration(value)
    raise OllamaError(400, f"Unsupported type: '{type(value).__name__}'")


def check_think(value: Any) -> bool | str | None:
    """`think`: true, false or a level (`high`, `medium`, `low`, `max`); None if absent."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value in THINK_LEVELS:
        return value
    shown = value if isinstance(value, str) else json.dumps(value)
    raise OllamaError(
        400,
        f"invalid think value: {go_quote(str(shown))} "
        '(must be "high", "medium", "low", "max", true, or false)',
    )


def check_format(value: Any) -> tuple[bool, JSON | None]:
    """(wants JSON, schema or None)."""
    if value is None or value == "":
        return False, None
    if value == "json":
        return True, None
    if isinstance(value, dict):
        return True, value
    raw = json.dumps(value, separators=(",", ":"))
    raise OllamaError(
        500, f'invalid format: {go_quote(raw)}; expected "json" or a valid JSON Schema object'
    )


def parse_go_duration(value: str) -> int:
    """Go's time.ParseDuration (h, m, s, ms, us, ns), or integer seconds as text."""
    value = value.strip()
    if value.lstrip("-").isdigit():
        return int(value) * 1_000_000_000
    units = {"h": 3.6e12, "m": 6e10, "s": 1e9, "ms": 1e6, "us": 1e3, "µs": 1e3, "ns": 1.0}
    parts = re.findall(r"(-?\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)", value)
    if not parts or "".join(n + u for n, u in parts) != value.lstrip("+"):
        raise OllamaError(400, f"time: invalid duration {go_quote(value)}")
    return int(sum(float(n) * units[u] for n, u in parts))
