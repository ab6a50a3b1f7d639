"""Talking to Ollama servers: one client per backend, and the pool that routes between them."""

from app.backends.client import OllamaClient, RelayResponse
from app.backends.errors import (
    BackendBusy,
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    StreamInterrupted,
)
from app.backends.pool import BackendPool, BackendSpec, parse_backend

__all__ = [
    "BackendBusy",
    "BackendError",
    "BackendPool",
    "BackendSpec",
    "BackendTimeout",
    "BackendUnavailable",
    "OllamaClient",
    "RelayResponse",
    "StreamInterrupted",
    "parse_backend",
]
