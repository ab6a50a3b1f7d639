"""What an emulator instance remembers: installed and loaded models, faults, counters."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from app.emulator.catalog import Spec, lookup, synthesise
from app.emulator.config import EmulatorConfig
from app.emulator.names import ModelName, parse

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


@dataclass
class Faults:
    fail_next: int = 0
    fail_status: int = 500
    fail_message: str = "emulated failure"
    cut_after_chunks: int | None = None
    stall_ms: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "fail_next": self.fail_next,
            "fail_status": self.fail_status,
            "fail_message": self.fail_message,
            "cut_after_chunks": self.cut_after_chunks,
            "stall_ms": self.stall_ms,
        }


@dataclass
class State:
    config: EmulatorConfig
    installed: dict[tuple[str, str, str, str], Installed] = field(default_factory=dict)
    loaded: dict[tuple[str, str, str, str], Loaded] = field(default_factory=dict)
    faults: Faults = field(default_factory=Faults)
    requests: int = 0
    token_delay_ms: float = 0.0
    first_token_delay_ms: float = 0.0

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
        self.token_delay_ms = self.config.token_delay_ms
        self.first_token_delay_ms = self.config.first_token_delay_ms
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
        self.loaded[name.key] = Loaded(installed, time.time_ns() + ttl, num_ctx)

    def was_loaded(self, name: ModelName) -> bool:
        entry = self.loaded.get(name.key)
        return entry is not None and entry.expires_ns > time.time_ns()

    def running(self) -> list[Loaded]:
        now = time.time_ns()
        live = [entry for entry in self.loaded.values() if entry.expires_ns > now]
        return sorted(live, key=lambda e: e.expires_ns, reverse=True)
