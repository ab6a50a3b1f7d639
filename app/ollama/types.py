"""The seed's dataclasses: what callers pass in and get back from the core."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ExecutionOptions:
    """Options of one run, in the seed's words; see `to_ollama_options` for Ollama's words."""

    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 40
    repeat_penalty: float = 1.1
    max_tokens: int = 2048
    timeout: int = 300
    stream: bool = False
    format: str | dict[str, Any] | None = None
    system_prompt: str | None = None
    context_window: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class OllamaModel:
    """A model installed on a backend, as `/api/tags` describes it."""

    name: str
    id: str
    size: int
    modified: str
    parameters: str | None = None
    family: str | None = None
    format: str | None = None
    status: str = "available"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ModelExecutionResult:
    """The outcome of one run: success or failure, never an exception for a backend's fault."""

    model_name: str
    prompt: str
    response: str
    execution_time: float
    tokens_used: int | None = None
    success: bool = True
    error_message: str | None = None
    metadata: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StreamingChunk:
    """One piece of a streamed run; the last one (`done=True`) carries the final stats."""

    content: str
    index: int
    done: bool = False
    timestamp: float = field(default_factory=time.time)
    thinking: str | None = None
    stats: dict[str, Any] | None = None
    result: ModelExecutionResult | None = None
    """On the closing chunk: the finished (and stored) result."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
