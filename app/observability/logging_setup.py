"""Structured logs: one JSON object per line, with the request id when there is one.

`GATEWAY_LOG_FORMAT=json` (the default) makes the app's and uvicorn's loggers write
`{"ts", "level", "logger", "msg", "request_id", ...}` (with tracing on, `trace_id` and
`span_id` of the span current when the line was written) and whatever `extra=` fields a call
passes; `text` keeps a plain format. uvicorn's own access log is off: the gateway writes
one access line per request itself (`ollama_gateway.access`), with the route, status,
duration, principal and request id.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from app.observability import telemetry
from app.observability.request_context import request_id

__all__ = ["JsonFormatter", "log_config"]

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        current = request_id.get()
        if current is not None:
            entry["request_id"] = current
        ids = telemetry.current_ids()  # None unless tracing is on and a span is current
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids[0], ids[1]
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def effective_format(log_format: str | None) -> str:
    """The log format to use: as set, else text on a terminal and JSON otherwise."""
    if log_format is not None:
        return log_format
    return "text" if sys.stdout.isatty() else "json"


def log_config(log_format: str | None, level: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` for uvicorn's `log_config` (app and uvicorn loggers)."""
    formatter: dict[str, Any] = (
        {"()": JsonFormatter}
        if effective_format(log_format) == "json"
        else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "default",
        "stream": "ext://sys.stderr",
    }
    upper = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"default": handler},
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": upper, "propagate": False},
            "uvicorn.error": {"handlers": ["default"], "level": upper, "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
            "app": {"handlers": ["default"], "level": upper, "propagate": False},
            "ollama_gateway": {"handlers": ["default"], "level": upper, "propagate": False},
        },
        # Other libraries' warnings and errors (asyncio, httpx, SQLAlchemy) in the same format.
        "root": {"handlers": ["default"], "level": "WARNING"},
    }
