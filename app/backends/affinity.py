"""Conversation affinity: the next turn of a chat goes back to the backend that served the
last one, whose prompt cache then holds the conversation so far (Ollama evaluates only the
tokens past the cached prefix).

When a chat finishes on a backend, the hash of its model and messages with the reply
appended is remembered with that backend's name. A later chat whose messages, cut after
one of its assistant messages (the longest such prefix first), hash to a remembered key
prefers that backend (`BackendPool.candidates(prefer=...)`), while it is healthy, allowed,
has the model and has a free slot (a request there would start, not queue). Only roles and text count: images, tool calls and
thinking are left out of the hash.

In-process state, bounded (least recently used entries go first) and expiring after `ttl`
seconds: a process or replica without an entry routes the turn as any other request.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["ConversationAffinity"]


class ConversationAffinity:
    """Remembered conversations: message-prefix hash -> backend name (see the module doc).

    `ttl` 0 turns it off. Safe to use from several threads (the sync doors' loop)."""

    def __init__(self, ttl: float = 600.0, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        return self.ttl > 0 and self.max_entries > 0

    def prefer(self, model: str, messages: Sequence[Mapping[str, Any]]) -> str | None:
        """The backend that served this conversation up to its last assistant message
        (or an earlier one), or None."""
        if not self.enabled or not messages:
            return None
        keys = _prefix_keys(model, messages)
        now = time.monotonic()
        with self._lock:
            for key in reversed(keys):
                entry = self._entries.get(key)
                if entry is None:
                    continue
                backend, expires = entry
                if expires <= now:
                    del self._entries[key]
                    continue
                self._entries.move_to_end(key)
                return backend
        return None

    def remember(
        self, model: str, messages: Sequence[Mapping[str, Any]], reply: str, backend: str
    ) -> None:
        """`backend` served `messages` and answered `reply`: the next turn should go there."""
        if not self.enabled:
            return
        digest = _start(model)
        for message in messages:
            _feed(digest, message)
        _feed(digest, {"role": "assistant", "content": reply})
        key = digest.digest()
        with self._lock:
            self._entries[key] = (backend, time.monotonic() + self.ttl)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def forget(self, backend: str) -> None:
        """Drop every entry pointing at `backend` (taken out of the pool)."""
        with self._lock:
            for key in [k for k, (name, _) in self._entries.items() if name == backend]:
                del self._entries[key]


def _start(model: str) -> Any:
    digest = hashlib.sha256()
    digest.update(model.encode() + b"\0")
    return digest


def _feed(digest: Any, message: Mapping[str, Any]) -> None:
    role = str(message.get("role") or "").lower().encode()
    content = message.get("content")
    text = content if isinstance(content, str) else "" if content is None else repr(content)
    body = text.encode("utf-8", "surrogatepass")
    digest.update(len(role).to_bytes(4, "big") + role + len(body).to_bytes(8, "big") + body)


def _prefix_keys(model: str, messages: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """The key of each prefix of `messages` that ends with an assistant message, shortest
    first."""
    digest = _start(model)
    keys: list[bytes] = []
    for message in messages:
        _feed(digest, message)
        if str(message.get("role") or "").lower() == "assistant":
            keys.append(digest.copy().digest())
    return keys
