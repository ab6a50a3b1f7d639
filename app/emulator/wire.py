"""Bytes as Ollama's Go server writes them: compact JSON, `<>&` escaped, RFC 3339 times."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any


def dumps(obj: Any) -> bytes:
    """Go `encoding/json`: compact, keys in insertion order, `<` `>` `&` as \\u escapes."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return text.encode()


def _rfc3339(dt: datetime, nanos: int) -> str:
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{nanos:09d}".rstrip("0")
    offset = dt.strftime("%z")
    # Go writes a zero offset as "Z", whatever the zone is called.
    zone = "Z" if offset in ("+0000", "") else f"{offset[:3]}:{offset[3:]}"
    return f"{base}.{frac}{zone}" if frac else f"{base}{zone}"


def utc_now() -> str:
    """`created_at`: UTC, up to 9 fractional digits, trailing zeros dropped."""
    ns = time.time_ns()
    return _rfc3339(datetime.fromtimestamp(ns // 1_000_000_000, UTC), ns % 1_000_000_000)


def local_time(ns: int) -> str:
    """`modified_at` / `expires_at`: the server's local offset, as Ollama writes them."""
    dt = datetime.fromtimestamp(ns // 1_000_000_000).astimezone()
    return _rfc3339(dt, ns % 1_000_000_000)
