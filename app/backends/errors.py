"""One exception hierarchy for everything that can go wrong talking to an Ollama server.

The core turns these into failed `ModelExecutionResult`s for runs and lets them through
for management calls, so a caller (or the REST layer) can tell "the backend said no"
(`BackendError` with a status) from "nobody answered" (`BackendUnavailable`) and "it took
too long" (`BackendTimeout`) without parsing messages.
"""

from __future__ import annotations

__all__ = [
    "BackendBusy",
    "BackendError",
    "BackendTimeout",
    "BackendUnavailable",
    "StreamInterrupted",
]


class BackendError(Exception):
    """The backend answered with an error, or the exchange with it failed.

    `message` is the backend's own error text when it sent one (Ollama's `{"error": ...}`),
    so callers can show users what Ollama said; `status` is the HTTP status (None when no
    reply was received, 200 for an error line inside a stream).
    """

    def __init__(self, message: str, *, status: int | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.url = url

    def __str__(self) -> str:
        return self.message


class BackendUnavailable(BackendError):
    """No connection could be made (refused, DNS failure, no healthy backend)."""


class BackendTimeout(BackendError):
    """The backend did not answer (or finish) within the allowed time."""


class StreamInterrupted(BackendError):
    """A streamed reply stopped before its final `done` line (connection dropped or cut)."""


class BackendBusy(BackendError):
    """Every slot of the backend is taken and its wait queue is full (or the wait ran out)."""
