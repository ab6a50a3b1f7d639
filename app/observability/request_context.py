"""The id of the request being served, for logs and for the requests sent to backends.

A context variable (no FastAPI import), so the backend client can read it: each request
the gateway makes to an Ollama server carries the `X-Request-ID` of the request that
caused it.
"""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["request_id"]

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
