"""Rows a database refused, made storable: the last resort of the writers' retries.

The API refuses NUL and lone surrogates in request bodies at the edge, but text reaches
rows by other ways too (a path parameter in an audit entry, a backend's reply, a key's
name). PostgreSQL refuses NUL in text and JSON; neither database takes a lone surrogate
(it is not UTF-8); a `String(n)` column refuses longer text on PostgreSQL. When a row
still fails on its own, `escape_row` rewrites its text in place so that it can be stored:
NUL and lone surrogates become the six characters of their JSON escape (`\\u0000`), text
longer than its column is cut, and `text_escaped` is set so that readers can tell.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import JSON, String, inspect

from app.storage.tables import Base

__all__ = ["escape_row", "escape_text", "has_unstorable_text"]

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def has_unstorable_text(value: str) -> bool:
    """True when `value` holds NUL or a lone surrogate."""
    return _UNSTORABLE.search(value) is not None


def escape_text(value: str) -> str:
    """NUL and lone surrogates as their JSON escapes (`\\u0000`, `\\ud800`)."""
    return _UNSTORABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", value)


def _escape_json(value: Any) -> Any:
    if isinstance(value, str):
        return escape_text(value)
    if isinstance(value, dict):
        return {escape_text(str(k)): _escape_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_escape_json(v) for v in value]
    return value


def escape_row(row: Base) -> bool:
    """Rewrite `row`'s text columns so that any database can store them (see module doc).

    False when there was nothing to rewrite (the row failed for another reason).
    """
    changed = False
    for attr in inspect(type(row)).column_attrs:
        key, column = attr.key, attr.columns[0]
        value = getattr(row, key, None)
        if value is None:
            continue
        if isinstance(column.type, String) and isinstance(value, str):
            text = escape_text(value)
            length = column.type.length
            text = text[:length] if length else text
        elif isinstance(column.type, JSON):
            text = _escape_json(value)
        else:
            continue
        if text != value:
            setattr(row, key, text)
            changed = True
    if changed and hasattr(row, "text_escaped"):
        row.text_escaped = True
    return changed
