"""The emulator's engine interface: what writes the answers of generate, chat and embed.

Two engines implement `Engine`: the filler (`filler.FillerEngine`: deterministic text, no
model) and llama.cpp (`llama_engine.LlamaEngine`: a real GGUF model). The HTTP handlers
(`inference.py`) check a request, hand the engine a `GenerationJob` or an `EmbedJob`, and
write Ollama's wire format from what comes back; they never ask which engine they hold.

A generation comes back as events: `Piece`s (answer text, thinking text or tool calls) as
they are written, then one `Finished` with the reason and Ollama's counters. Awaiting
`Engine.generate` is the engine's chance to refuse before any byte is sent (a full queue is
`OllamaError(503)`); the pieces then take the time the engine takes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from app.emulator.catalog import Spec

if TYPE_CHECKING:
    from app.emulator.prompt_cache import PromptCache

__all__ = [
    "EmbedJob",
    "Embedded",
    "Engine",
    "Event",
    "Finished",
    "GenerationJob",
    "Piece",
    "chain",
]

JSON = dict[str, Any]


@dataclass(frozen=True)
class GenerationJob:
    """A checked generate or chat request, as an engine needs it."""

    kind: Literal["generate", "chat"]
    spec: Spec
    """The model's catalogue entry."""
    prompt: str
    """generate: the prompt; chat: empty."""
    system: str
    """The request's `system` field (empty when absent)."""
    raw: bool
    """generate: `raw` (the prompt goes to the model as it is, no template, no context)."""
    messages: list[JSON]
    """chat: the conversation (each a JSON object); generate: empty."""
    tools: list[Any]
    """chat: the tools offered (empty when none)."""
    options: JSON
    """The checked `options` (sampling, `num_predict`, `stop`, `num_ctx`, ...)."""
    think: bool | str | None
    """The checked `think` value: None when absent."""
    wants_json: bool
    """`format` asks for JSON (`"json"` or a schema)."""
    schema: JSON | None
    """`format` as a JSON schema, or None."""
    stream: bool
    """The reply streams (NDJSON) rather than coming as one object."""
    cold: bool
    """The model was not loaded when the request came."""
    cache: PromptCache | None = None
    """The loaded model's prompt cache (None: nothing cached, every token is evaluated)."""
    context: list[int] = field(default_factory=list)
    """generate: the `context` sent (the token ids of the conversation so far)."""


@dataclass(frozen=True)
class Piece:
    """A piece of the answer as it is written: text, thinking text, or tool calls."""

    content: str = ""
    thinking: str | None = None
    tool_calls: list[JSON] | None = None


@dataclass(frozen=True)
class Finished:
    """The end of a generation: why it ended, and Ollama's counters (durations in ns)."""

    reason: str
    metrics: dict[str, int]
    """total_duration, load_duration, prompt_eval_count, prompt_eval_duration, eval_count,
    eval_duration, in that order (the order they go on the wire)."""
    context: list[int] | None = None
    """generate: the token context to send back, or None for none."""


Event = Piece | Finished


@dataclass(frozen=True)
class EmbedJob:
    """A checked /api/embed request with at least one input."""

    spec: Spec
    inputs: list[str]
    dimensions: int | None
    """The `dimensions` asked for (an integer), or None."""
    cold: bool
    """The model was not loaded when the request came."""


@dataclass(frozen=True)
class Embedded:
    """/api/embed's answer: one vector per input, and its counters (durations in ns)."""

    vectors: list[list[float]]
    total_duration: int
    load_duration: int
    prompt_eval_count: int


class Engine(Protocol):
    """What writes the answers: text for generate and chat, vectors for embed."""

    async def generate(self, job: GenerationJob) -> AsyncIterator[Event]:
        """The events of one generation: `Piece`s, then one `Finished`.

        Raises `OllamaError` when awaited if the engine refuses the job; nothing has been
        sent then, so the refusal is the reply."""
        ...

    def check_embed(self, spec: Spec, inputs: list[str], truncate: bool) -> None:
        """Raise `OllamaError` for inputs the engine refuses (before the model is loaded)."""
        ...

    async def embed(self, job: EmbedJob) -> Embedded:
        """/api/embed: L2-normalised vectors, one per input."""
        ...

    async def embedding(self, spec: Spec, prompt: str) -> list[float]:
        """/api/embeddings (the legacy endpoint): one vector for one prompt."""
        ...

    def status(self) -> JSON:
        """The emulator's `GET /_emulator/engine`: `engine`, `state` (`running`, or
        `restarting` while a crashed model runner comes back) and what else it knows."""
        ...


async def chain(first: Event, rest: AsyncIterator[Event]) -> AsyncIterator[Event]:
    """`first`, then the events of `rest`."""
    yield first
    async for event in rest:
        yield event
