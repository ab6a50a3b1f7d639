"""The pieces of one run shared by `OllamaManager`, `ModelRunner` and the relay.

A run is described by a `RunSpec` (built and validated synchronously by `generate_spec`
or `chat_spec`, so a caller's bug raises `ValueError` at the call site even for methods
returning futures), executed by `RunExecutor`, and observed through a
`StreamAccumulator` that turns backend chunks into `StreamingChunk`s and remembers what a
failed run had produced so far.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from app.ollama.errors import InvalidRequest
from app.ollama.metadata import RunMetadata
from app.ollama.options import RequestPlan
from app.ollama.types import ModelExecutionResult, StreamingChunk

Kind = Literal["generate", "chat"]
ChunkCallback = Callable[[StreamingChunk], None]

#: The metrics Ollama puts on a final chunk, copied into a result's metadata as they are.
METRIC_KEYS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)
MESSAGE_ROLES = frozenset({"system", "user", "assistant", "tool"})
_MESSAGE_KEYS = frozenset(
    {"role", "content", "thinking", "images", "tool_calls", "tool_name", "tool_call_id"}
)


def require_model_name(model_name: Any) -> str:
    if not isinstance(model_name, str) or not model_name.strip():
        raise InvalidRequest(f"model_name must be a non-empty string, got {model_name!r}")
    return model_name.strip()


def require_prompt(prompt: Any, what: str = "prompt") -> str:
    if not isinstance(prompt, str):
        raise InvalidRequest(f"{what} must be a string, got {type(prompt).__name__}")
    if not prompt:
        # Ollama reads an empty prompt as "load the model", which is never what a run means.
        raise InvalidRequest(f"{what} must not be empty")
    return prompt


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """Check a chat history: a non-empty list of `{"role", "content", ...}` dicts.

    Roles are Ollama's (`system`, `user`, `assistant`, `tool`, case-insensitive); content is
    a string, non-empty for system and user turns (a user turn may be images alone); other
    keys must be Ollama message keys.
    """
    if not isinstance(messages, Sequence) or isinstance(messages, str | bytes):
        raise InvalidRequest("messages must be a list of {'role': ..., 'content': ...} dicts")
    if not messages:
        raise InvalidRequest("messages must not be empty")
    checked: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidRequest(f"messages[{i}] must be a dict, got {type(message).__name__}")
        unknown = set(message) - _MESSAGE_KEYS
        if unknown:
            raise InvalidRequest(
                f"messages[{i}] has unknown keys: {', '.join(sorted(map(str, unknown)))}"
            )
        role = message.get("role")
        if not isinstance(role, str) or role.lower() not in MESSAGE_ROLES:
            raise InvalidRequest(
                f"messages[{i}].role must be one of {', '.join(sorted(MESSAGE_ROLES))}, got {role!r}"
            )
        content = message.get("content")
        if not isinstance(content, str):
            raise InvalidRequest(f"messages[{i}].content must be a string, got {content!r}")
        role = role.lower()
        if role in ("system", "user") and not content and not message.get("images"):
            raise InvalidRequest(f"messages[{i}].content must not be empty for a {role} message")
        checked.append({**message, "role": role})
    return checked


@dataclass
class RunSpec:
    """One validated run: what to send, and how to describe it in the result."""

    kind: Kind
    model: str
    prompt: str
    plan: RequestPlan
    messages: list[dict[str, Any]] | None = None
    metadata: RunMetadata = field(default_factory=lambda: RunMetadata())
    session: str | None = None
    """The client's own name for the conversation this run belongs to (OpenAI's
    `prompt_cache_key`, Claude Code's `X-Claude-Code-Session-Id`, opencode's
    `x-session-affinity`): a routing signal, so that a session's turns go where its prompt
    is cached. Chosen by the client: never trusted for access or isolation."""
    stored_history: int = 0
    """Messages at the start of `messages` that are stored already, as an earlier run's
    conversation (a Responses API `previous_response_id`): the run's record keeps only the
    messages after them, so a long conversation is not stored again at every turn."""

    def payload(self) -> dict[str, Any]:
        """The `/api/generate` or `/api/chat` body (without `stream`, the client sets it)."""
        body: dict[str, Any] = {"model": self.model}
        if self.kind == "generate":
            body["prompt"] = self.prompt
            if self.plan.system:
                body["system"] = self.plan.system
        else:
            messages = list(self.messages or [])
            if self.plan.system and not any(m["role"] == "system" for m in messages):
                messages.insert(0, {"role": "system", "content": self.plan.system})
            body["messages"] = messages
        body.update(self.plan.request_fields())
        return body


def generate_spec(model_name: str, prompt: str | None, plan: RequestPlan) -> RunSpec:
    """A validated `/api/generate` run (`ValueError` for a bad model name or prompt)."""
    return RunSpec(
        kind="generate",
        model=require_model_name(model_name),
        prompt=require_prompt(prompt),
        plan=plan,
    )


def chat_spec(model_name: str, messages: Sequence[Mapping[str, Any]], plan: RequestPlan) -> RunSpec:
    """A validated `/api/chat` run; its `prompt` is the last user message."""
    checked = validate_messages(messages)
    last_user = next((m["content"] for m in reversed(checked) if m["role"] == "user"), "")
    return RunSpec(
        kind="chat",
        model=require_model_name(model_name),
        prompt=last_user,
        plan=plan,
        messages=checked,
    )


class Pieces:
    """A run's text as it arrives, held compactly: a long reply is tens of thousands of
    tokens, and one `str` object per token would cost ~60 bytes each for as long as the
    run lasts. Pieces are joined every `_COMPACT_EVERY` appends; `len()` counts them."""

    _COMPACT_EVERY = 64

    def __init__(self) -> None:
        self._done = ""
        self._recent: list[str] = []
        self._count = 0

    def append(self, piece: str) -> None:
        self._recent.append(piece)
        self._count += 1
        if len(self._recent) >= self._COMPACT_EVERY:
            self._done += "".join(self._recent)
            self._recent.clear()

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __str__(self) -> str:
        if self._recent:
            self._done += "".join(self._recent)
            self._recent.clear()
        return self._done


class StreamAccumulator:
    """Collects a run's text as it streams and forwards each piece to a callback."""

    def __init__(self, on_chunk: ChunkCallback | None = None) -> None:
        self.on_chunk = on_chunk
        #: Awaited after each backend chunk: returns when the caller has room for more.
        self.pace: Callable[[], Awaitable[None]] | None = None
        self.started = time.perf_counter()
        self.first_token_at: float | None = None
        self.pieces = Pieces()
        self.thinking = Pieces()
        self.tool_calls: list[Any] = []
        self.final: dict[str, Any] | None = None
        self.index = 0
        self.fed = 0
        """Pieces (text or thinking) taken so far: the tokens the caller has seen."""
        self.last_fed_at: float | None = None

    @property
    def text(self) -> str:
        return str(self.pieces)

    @property
    def restartable(self) -> bool:
        """Whether nothing has gone to the caller yet (no chunk callback: it waits for the
        whole result), so the run may start over on another backend."""
        return self.on_chunk is None

    def restart(self) -> None:
        """Forget a partial answer: the run starts over (on another backend)."""
        self.first_token_at = None
        self.pieces, self.thinking, self.tool_calls = Pieces(), Pieces(), []
        self.final = None
        self.index = 0
        self.fed = 0
        self.last_fed_at = None

    @property
    def time_to_first_token(self) -> float | None:
        if self.first_token_at is None:
            return None
        return self.first_token_at - self.started

    def feed(self, content: str, thinking: str | None = None) -> None:
        if not content and not thinking:
            return
        self.fed += 1
        self.last_fed_at = time.perf_counter()
        if self.first_token_at is None:
            self.first_token_at = self.last_fed_at
        if content:
            self.pieces.append(content)
        if thinking:
            self.thinking.append(thinking)
        self._emit(StreamingChunk(content=content, index=self.index, thinking=thinking or None))

    def feed_ollama_chunk(self, kind: Kind, chunk: Mapping[str, Any]) -> None:
        """Take one NDJSON object of `/api/generate` or `/api/chat`."""
        if kind == "generate":
            content, thinking = chunk.get("response") or "", chunk.get("thinking")
        else:
            message = chunk.get("message") or {}
            content, thinking = message.get("content") or "", message.get("thinking")
            if message.get("tool_calls"):
                self.tool_calls.extend(message["tool_calls"])
        self.feed(str(content), str(thinking) if thinking else None)
        if chunk.get("done") is True:
            self.final = dict(chunk)

    def feed_whole_reply(self, kind: Kind, reply: Mapping[str, Any]) -> None:
        """Take a whole `stream: false` reply (one piece). Its time to first token is an
        estimate: when the reply arrived less the backend's decode time (`eval_duration`),
        i.e. queueing, loading and prompt evaluation; the arrival itself when the backend
        gives no decode time or one longer than the run so far."""
        self.feed_ollama_chunk(kind, reply)
        if self.first_token_at is None:
            return
        eval_ns = reply.get("eval_duration")
        if isinstance(eval_ns, int) and not isinstance(eval_ns, bool) and eval_ns > 0:
            estimate = self.first_token_at - eval_ns / 1e9
            if estimate > self.started:
                self.first_token_at = estimate

    def finish(self, result: ModelExecutionResult) -> None:
        """Send the closing `done` chunk (empty content): the outcome in `stats` and the
        finished, stored result itself in `result`."""
        self._emit(
            StreamingChunk(
                content="",
                index=self.index,
                done=True,
                stats=final_chunk_stats(result),
                result=result,
            )
        )

    def _emit(self, chunk: StreamingChunk) -> None:
        self.index += 1
        if self.on_chunk is not None:
            self.on_chunk(chunk)


def ollama_metrics(final: Mapping[str, Any] | None) -> RunMetadata:
    """Ollama's counters from a final chunk, plus decode speed in tokens/s."""
    if not final:
        return {}
    metrics = cast(RunMetadata, {key: final[key] for key in METRIC_KEYS if key in final})
    if final.get("done_reason"):
        metrics["done_reason"] = final["done_reason"]
    eval_count, eval_duration = final.get("eval_count"), final.get("eval_duration")
    if isinstance(eval_count, int) and isinstance(eval_duration, int) and eval_duration > 0:
        metrics["tokens_per_second"] = eval_count / eval_duration * 1e9
    return metrics


def final_chunk_stats(result: ModelExecutionResult) -> dict[str, Any]:
    """What the closing `StreamingChunk` carries: the outcome and the result's metadata."""
    return {
        "success": result.success,
        "error_message": result.error_message,
        "execution_time": result.execution_time,
        "tokens_used": result.tokens_used,
        **(result.metadata or {}),
    }
