"""The core's own exception for bad input.

`InvalidRequest` is what the core raises when a caller's arguments are wrong (an invalid
model name, an unknown option, an empty prompt). It is a `ValueError`, as the seed's
methods promise, so callers that catch `ValueError` keep working; the REST layer turns
only this class into a 422, so an internal bug that happens to raise a `ValueError` is a
500, never a 422 with internal text.
"""

from __future__ import annotations

__all__ = ["InvalidRequest", "RunCancelled"]


class InvalidRequest(ValueError):
    """The caller's input is invalid; the message says what is wrong with it."""


class RunCancelled(Exception):
    """A run ended because its caller left (a client disconnected, a job was cancelled)."""
