"""What an emulator instance remembers: installed and loaded models, faults, counters."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from app.emulator.catalog import Spec, lookup, synthesise
from app.emulator.config import EmulatorConfig
from app.emulator.errors import OllamaError
from app.emulator.names import ModelName, parse
from app.emulator.prompt_cache import PromptCache, Vocabulary

MAX_WAITING = 512
"""Runs that may wait for a slot of a model (Ollama's `OLLAMA_MAX_QUEUE`)."""
DEFAULT_KEEP_ALIVE_NS = 5 * 60 * 1_000_000_000
FOREVER_NS = 292 * 365 * 24 * 3600 * 1_000_000_000


@dataclass
class Installed:
    display: str
    spec: Spec
    modified_ns: int


@dataclass
class Loaded:
    installed: Installed
    expires_ns: int
    context_length: int
    cache: PromptCache = field(default_factory=PromptCache)
    """Its prompt cache (see `prompt_cache`): emptied by a cold load."""


@dataclass
class Faults:
    """The emulated faults (see README, "The emulator"). Counts (`fail_next`,
    `drop_connection`) are used up one request at a time; the others hold until reset."""

    fail_next: int = 0
    """Answer the next N /api/ requests with `fail_status` and `{"error": fail_message}`."""
    fail_status: int = 500
    fail_message: str = "emulated failure"
    cut_after_chunks: int | None = None
    """Streamed replies: drop the connection after N NDJSON lines."""
    stall_ms: float = 0.0
    """Wait this long before answering any /api/ request."""
    fail_after_tokens: int | None = None
    """generate/chat: after N tokens the reply fails with `fail_message`: streamed, with
    Ollama's in-stream `{"error": ...}` line; not streamed, with a 500."""
    stall_after_tokens: int | None = None
    """generate/chat: after N tokens the reply stops for `stall_after_tokens_ms`, then goes on."""
    stall_after_tokens_ms: float = 0.0
    drop_connection: int = 0
    """Close the connection of the next N /api/ requests without any reply."""
    slow_ms: float = 0.0
    """generate/chat: an extra delay per token, on top of `token_delay_ms`."""

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in FAULT_TYPES}


FAULT_TYPES: dict[str, tuple[type, bool]] = {
    "fail_next": (int, False),
    "fail_status": (int, False),
    "fail_message": (str, False),
    "cut_after_chunks": (int, True),
    "stall_ms": (float, False),
    "fail_after_tokens": (int, True),
    "stall_after_tokens": (int, True),
    "stall_after_tokens_ms": (float, False),
    "drop_connection": (int, False),
    "slow_ms": (float, False),
}
"""Each fault field: its type (int, float or str) and whether null is allowed (off)."""


RECEIVED_KEPT = 200
"""How many requests `State.received` remembers."""


@dataclass
class State:
    config: EmulatorConfig
    installed: dict[tuple[str, str, str, str], Installed] = field(default_factory=dict)
    loaded: dict[tuple[str, str, str, str], Loaded] = field(default_factory=dict)
    faults: Faults = field(default_factory=Faults)
    requests: int = 0
    received: deque[dict[str, object]] = field(default_factory=lambda: deque(maxlen=RECEIVED_KEPT))
    """The last requests received (any path but the control endpoints, known or not): method,
    path and the names of the headers, so a test can see what reached the server (and what
    did not), without the values (credentials) being kept."""
    token_delay_ms: float = 0.0
    first_token_delay_ms: float = 0.0
    prompt_eval_ms_per_token: float = 0.0
    vocabulary: Vocabulary = field(default_factory=Vocabulary)
    """Token ids given out in `context`s, read back when a request sends one."""
    slots: dict[tuple[str, str, str, str], asyncio.Semaphore] = field(default_factory=dict)
    """Per model, its `num_parallel` slots (none without a limit)."""
    waiting: int = 0

    @classmethod
    def fresh(cls, config: EmulatorConfig) -> State:
        state = cls(config)
        state.reset()
        return state

    def reset(self) -> None:
        self.installed.clear()
        self.loaded.clear()
        self.faults = Faults()
        self.requests = 0
        self.received.clear()
        self.token_delay_ms = self.config.token_delay_ms
        self.first_token_delay_ms = self.config.first_token_delay_ms
        self.prompt_eval_ms_per_token = self.config.prompt_eval_ms_per_token
        now = time.time_ns()
        for i, raw in enumerate(self.config.models):
            name = parse(raw)
            if name is not None:
                # Earlier names on the command line count as more recently modified.
                self.install(name, modified_ns=now - i * 1_000_000_000)

    def install(self, name: ModelName, *, modified_ns: int | None = None) -> Installed:
        spec = lookup(name) or synthesise(name)
        entry = Installed(name.short, spec, modified_ns or time.time_ns())
        self.installed[name.key] = entry
        return entry

    def find(self, name: ModelName) -> Installed | None:
        return self.installed.get(name.key)

    def resolve(self, raw: str) -> tuple[ModelName, Installed] | None:
        """The installed model a requested name means, or None."""
        name = parse(raw)
        if name is None:
            return None
        installed = self.find(name)
        return (name, installed) if installed is not None else None

    def remove(self, name: ModelName) -> bool:
        self.loaded.pop(name.key, None)
        return self.installed.pop(name.key, None) is not None

    def touch_loaded(
        self, name: ModelName, installed: Installed, keep_alive_ns: int | None, num_ctx: int
    ) -> None:
        if keep_alive_ns == 0:
            self.loaded.pop(name.key, None)
            return
        ttl = DEFAULT_KEEP_ALIVE_NS if keep_alive_ns is None else keep_alive_ns
        if ttl < 0:
            ttl = FOREVER_NS
        cache = self.prompt_cache(name) or PromptCache(self.config.cached_prompts)
        self.loaded[name.key] = Loaded(installed, time.time_ns() + ttl, num_ctx, cache)

    @asynccontextmanager
    async def slot(self, name: ModelName) -> AsyncIterator[None]:
        """Hold one of the model's `num_parallel` slots for a run (waiting for one as Ollama's
        scheduler does; 503 `server busy` when `MAX_WAITING` runs wait already)."""
        limit = self.config.num_parallel
        if limit is None:
            yield
            return
        slots = self.slots.get(name.key)
        if slots is None:
            slots = self.slots[name.key] = asyncio.Semaphore(limit)
        if slots.locked() and self.waiting >= MAX_WAITING:
            raise OllamaError(
                503, "server busy, please try again.  maximum pending requests exceeded"
            )
        self.waiting += 1
        try:
            await slots.acquire()
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            slots.release()

    def prompt_cache(self, name: ModelName) -> PromptCache | None:
        """The prompt cache of the model while it is loaded, else None."""
        entry = self.loaded.get(name.key)
        return entry.cache if entry is not None and entry.expires_ns > time.time_ns() else None

    def was_loaded(self, name: ModelName) -> bool:
        entry = self.loaded.get(name.key)
        return entry is not None and entry.expires_ns > time.time_ns()

    def running(self) -> list[Loaded]:
        now = time.time_ns()
        live = [entry for entry in self.loaded.values() if entry.expires_ns > now]
        return sorted(live, key=lambda e: e.expires_ns, reverse=True)
