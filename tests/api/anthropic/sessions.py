"""Recorded Claude Code sessions (`claude_code_sessions.json`): the requests Claude Code
2.1.332 sent, turn by turn, in their shape (roles, blocks, `cache_control`, tools, headers)
with synthetic text in place of its long texts (the same text in two turns gets the same
words)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


@cache
def sessions() -> dict[str, list[dict[str, Any]]]:
    """Each session's requests (`path`, `query`, `headers`, `body`), in order."""
    data = json.loads((HERE / "claude_code_sessions.json").read_text())
    found: dict[str, list[dict[str, Any]]] = data["sessions"]
    return found


def turns(session: str) -> list[dict[str, Any]]:
    return sessions()[session]
