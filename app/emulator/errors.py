"""Errors as Ollama reports them: a status and `{"error": "..."}`."""

from __future__ import annotations

import json
from typing import Any


class OllamaError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class CutConnection(Exception):
    """Raised mid-response to drop the connection (the `cut_after_chunks` fault)."""


def go_quote(text: str) -> str:
    """Go's %q: a double-quoted string with Go escapes (close enough to JSON's)."""
    return json.dumps(text, ensure_ascii=False)


_GO_JSON_TYPES = {
    str: "string",
    bool: "bool",
    int: "number",
    float: "number",
    dict: "object",
    list: "array",
    type(None): "null",
}


def json_type(value: Any) -> str:
    return _GO_JSON_TYPES.get(type(value), "value")
