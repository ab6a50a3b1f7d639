"""Translate and validate run options into what Ollama's API expects.

Ollama answers a wrongly typed option with a 500 and ignores an unknown one; the core
rejects both up front with `ValueError`, because either is the caller's bug and a typo
silently ignored (`temprature`) is worse than an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from app.ollama.errors import InvalidRequest
from app.ollama.types import ExecutionOptions

__all__ = ["OLLAMA_OPTION_TYPES", "RequestPlan", "plan_from_dict", "plan_from_execution_options"]

OptionKind = Literal["int", "float", "bool", "str_list"]

#: Ollama's runtime and load-time options with their JSON types (see docs/api.md).
OLLAMA_OPTION_TYPES: dict[str, OptionKind] = {
    "num_keep": "int",
    "seed": "int",
    "num_predict": "int",
    "top_k": "int",
    "top_p": "float",
    "min_p": "float",
    "typical_p": "float",
    "repeat_last_n": "int",
    "temperature": "float",
    "repeat_penalty": "float",
    "presence_penalty": "float",
    "frequency_penalty": "float",
    "stop": "str_list",
    "num_ctx": "int",
    "num_batch": "int",
    "num_gpu": "int",
    "main_gpu": "int",
    "use_mmap": "bool",
    "num_thread": "int",
    "draft_num_predict": "int",
    # Older names Ollama still accepts (and now ignores); passing them is not a bug.
    "mirostat": "int",
    "mirostat_tau": "float",
    "mirostat_eta": "float",
    "penalize_newline": "bool",
    "numa": "bool",
    "low_vram": "bool",
    "vocab_only": "bool",
    "use_mlock": "bool",
    "tfs_z": "float",
}

#: The seed's `ExecutionOptions` names that map onto an Ollama option of another name.
_RENAMED = {"max_tokens": "num_predict", "context_window": "num_ctx"}
#: Keys that are request fields, not `options` entries.
_REQUEST_KEYS = {"system_prompt", "system", "format", "timeout", "stream", "keep_alive"}


@dataclass
class RequestPlan:
    """What one run sends: Ollama `options` plus the request-level fields around them."""

    options: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    format: str | dict[str, Any] | None = None
    keep_alive: str | int | float | None = None
    timeout: float | None = None
    stream: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    """Other request fields passed on as they are (`tools`, `think`, `suffix`, ...)."""
    relax_think: bool = False
    """When the backend refuses `think` because the model cannot think, ask again without
    it instead of failing (Ollama's `relax_thinking`, which its Anthropic layer sets: Claude
    Code asks every model to think)."""

    def request_fields(self) -> dict[str, Any]:
        """The body fields besides model and prompt/messages (`options`, `format`, ...)."""
        body: dict[str, Any] = dict(self.extra)
        if self.options:
            body["options"] = dict(self.options)
        if self.format is not None:
            body["format"] = self.format
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        return body

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary kept in a result's metadata."""
        return {
            "options": dict(self.options),
            "system": self.system,
            "format": self.format,
            "keep_alive": self.keep_alive,
            "timeout": self.timeout,
            "stream": self.stream,
            **({"extra": dict(self.extra)} if self.extra else {}),
        }


def _check(name: str, kind: OptionKind, value: Any) -> Any:
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest(f"option {name!r} must be an integer, got {value!r}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidRequest(f"option {name!r} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise InvalidRequest(f"option {name!r} must be finite, got {value!r}")
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise InvalidRequest(f"option {name!r} must be a boolean, got {value!r}")
        return value
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"option {name!r} must be a list of strings, got {value!r}")
    return list(value)


def _check_format(value: Any) -> str | dict[str, Any] | None:
    if value is None or value == "":
        return None
    if value == "json" or isinstance(value, dict):
        return value  # type: ignore[no-any-return]
    raise InvalidRequest(f"format must be 'json' or a JSON schema object, got {value!r}")


def _check_optional_str(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{name!r} must be a string, got {value!r}")
    return value or None


def _check_timeout(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise InvalidRequest(f"'timeout' must be a positive number of seconds, got {value!r}")
    return float(value)


def plan_from_dict(options: Mapping[str, Any] | None) -> RequestPlan:
    """Validate a plain options dict (Ollama names and/or `ExecutionOptions` names).

    `max_tokens` becomes `num_predict`, `context_window` `num_ctx`; `system_prompt` (or
    `system`), `format`, `keep_alive`, `timeout` and `stream` are request fields. Unknown
    names and wrong types raise `ValueError`.
    """
    plan = RequestPlan()
    if options is None:
        return plan
    if not isinstance(options, Mapping):
        raise InvalidRequest(f"options must be a dict, got {type(options).__name__}")
    for raw_name, value in options.items():
        if not isinstance(raw_name, str):
            raise InvalidRequest(f"option names must be strings, got {raw_name!r}")
        if raw_name in _REQUEST_KEYS:
            if raw_name in ("system_prompt", "system"):
                plan.system = _check_optional_str(raw_name, value)
            elif raw_name == "format":
                plan.format = _check_format(value)
            elif raw_name == "timeout":
                plan.timeout = _check_timeout(value)
            elif raw_name == "stream":
                if not isinstance(value, bool):
                    raise InvalidRequest(f"'stream' must be a boolean, got {value!r}")
                plan.stream = value
            else:
                if value is not None and (
                    isinstance(value, bool) or not isinstance(value, str | int | float)
                ):
                    raise InvalidRequest(
                        f"'keep_alive' must be a duration string or seconds, got {value!r}"
                    )
                plan.keep_alive = value
            continue
        name = _RENAMED.get(raw_name, raw_name)
        kind = OLLAMA_OPTION_TYPES.get(name)
        if kind is None:
            known = sorted({*OLLAMA_OPTION_TYPES, *_RENAMED, *_REQUEST_KEYS})
            raise InvalidRequest(f"unknown option {raw_name!r}; known options: {', '.join(known)}")
        if value is None:
            continue
        if name in plan.options:
            raise InvalidRequest(
                f"option {raw_name!r} and {name!r} given together: they are one option"
            )
        plan.options[name] = _check(raw_name, kind, value)
    return plan


def plan_from_execution_options(options: ExecutionOptions | None) -> RequestPlan:
    """Translate the seed's `ExecutionOptions` (defaults when None) into a `RequestPlan`."""
    if options is None:
        options = ExecutionOptions()
    if not isinstance(options, ExecutionOptions):
        raise InvalidRequest(f"options must be an ExecutionOptions, got {type(options).__name__}")
    plan = RequestPlan(
        options={
            "temperature": _check("temperature", "float", options.temperature),
            "top_p": _check("top_p", "float", options.top_p),
            "top_k": _check("top_k", "int", options.top_k),
            "repeat_penalty": _check("repeat_penalty", "float", options.repeat_penalty),
            "num_predict": _check("max_tokens", "int", options.max_tokens),
        },
        system=_check_optional_str("system_prompt", options.system_prompt),
        format=_check_format(options.format),
        timeout=_check_timeout(options.timeout),
    )
    if options.context_window is not None:
        plan.options["num_ctx"] = _check("context_window", "int", options.context_window)
    if not isinstance(options.stream, bool):
        raise InvalidRequest(f"'stream' must be a boolean, got {options.stream!r}")
    plan.stream = options.stream
    return plan
