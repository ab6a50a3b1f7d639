"""Talking to Ollama servers: one client per backend, and the pool that routes between them."""

from app.backends.client import OllamaClient, RelayResponse
from app.backends.errors import BackendError, BackendTimeout, BackendUnavailable, StreamInterrupted
from app.backends.pool import BackendPool

__all__ = [
    "BackendError",
    "BackendPool",
    "BackendTimeout",
    "BackendUnavailable",
    "OllamaClient",
    "RelayResponse",
    "StreamInterrupted",
]
