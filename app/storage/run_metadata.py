"""What a stored run's `metadata` column holds (`Execution.metadata_`): every key, named
and documented, as `RunMetadata`.

The core fills it (`app.ollama.metadata`, which gives these types to the layers above);
storage keeps it as JSON with the run; the REST layer, metrics and the usage ledger read
it. It is a plain dict at run time (the seed types `ModelExecutionResult.metadata` so):
these are its shape for the type checker and for readers.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

__all__ = ["ErrorKind", "GroupKind", "ResumePoint", "RunMetadata", "RunMode", "Surface"]

ErrorKind = Literal[
    "BackendError",
    "BackendUnavailable",
    "BackendBusy",
    "BackendTimeout",
    "StreamInterrupted",
    "Cancelled",
]
"""Why a run failed: the backend said no or the exchange failed (`BackendError`), nobody
answered (`BackendUnavailable`), every slot was taken (`BackendBusy`), it took too long
(`BackendTimeout`), the reply stopped before its end (`StreamInterrupted`), or the caller
left (`Cancelled`)."""

GroupKind = Literal["batch", "benchmark", "comparison"]
RunMode = Literal["http", "cli", "relay"]
"""Through the backends' HTTP API, the `ollama` command line, or relayed as sent (`/api`)."""
Surface = Literal[
    "gateway", "ollama", "openai", "anthropic", "responses", "transcription", "speech"
]
"""The API a run came through: `/gateway`, `/api`, `/v1`'s completions and chats,
Anthropic's Messages API (`/v1/messages`), OpenAI's Responses API (`/v1/responses`), `/v1`'s
audio transcriptions (a chat run on an audio model) or speech (relayed text to speech)."""


class ResumePoint(TypedDict):
    """One seam of a resumed stream: the answer was cut on `backend` and continued."""

    backend: str
    """The backend that failed."""
    error: str
    """How it failed."""
    after_tokens: int
    """Tokens (pieces) the caller had received when it failed."""
    after_chars: int
    """Characters of answer text the caller had received."""
    pause: float | None
    """Seconds between the last piece before the seam and the first after it (None: no
    piece came after it)."""


class RunMetadata(TypedDict, total=False):
    """The keys of `ModelExecutionResult.metadata` (each optional)."""

    # -- what was asked --------------------------------------------------------------
    kind: str
    """generate, chat, stream, context, batch_item, benchmark, comparison or speech."""
    surface: Surface
    """The API the run came through (absent: the Python API or `/gateway`)."""
    mode: RunMode
    request: dict[str, Any]
    """The request as sent: options, system, format, keep_alive, timeout, stream."""
    request_extra: dict[str, Any]
    """Fields of a relayed `/api` body that are neither input nor options (think, tools)."""
    messages: list[dict[str, Any]]
    """A chat's history as sent (a run that continues a stored conversation,
    `previous_response_id`: only the messages of its own turn)."""
    previous_response_id: str
    """A Responses API run that continues a stored response: the messages before its own
    turn are that response's conversation, stored with it (not again in `messages`)."""
    response_id: str
    """The Responses API response the run was answered as (`resp_...`)."""
    upload: dict[str, Any]
    """A transcription's upload: `bytes`, `content_type`, `filename`, `language`,
    `response_format` (the audio itself is not kept, see `GATEWAY_STORE_TRANSCRIPTION_AUDIO`)."""
    speech: dict[str, Any]
    """A speech run's request (`voice`, `response_format`, ...: the body but its input) and
    reply (`bytes`, `content_type`); the audio itself is not kept."""
    question: str
    """A context run's question (the prompt holds the documents too)."""
    context_template: str
    """A context run's prompt template, by name."""
    context_docs_total: int
    """Documents given to a context run."""
    context_docs_used: list[int]
    """The documents that went into the prompt, by index."""
    context_docs_truncated: list[int]
    """Documents cut to fit the context window, by index."""
    context_docs_dropped: list[int]
    """Documents left out for lack of room, by index."""
    context_estimated_tokens: int
    """The prompt's estimated length in tokens."""
    ignored_options: list[str]
    """Options the `ollama` command line cannot take, left out in CLI mode."""
    principal: str
    """The API key (by name) the run was made for."""
    team: str
    """That key's team (absent: the key belongs to no team)."""
    batch_index: int
    """The run's place in its batch."""

    # -- where and how it ran ----------------------------------------------------------
    backend: str | None
    """The backend's URL."""
    failed_over_from: list[str]
    """Backends that failed before this one answered (`url: error`)."""
    resumed: bool
    """A streamed run whose backend failed mid-answer, continued on another backend."""
    backends: list[str]
    """A resumed run: every backend that wrote part of the answer, in order (`backend`
    is the last)."""
    resumes: list[ResumePoint]
    """A resumed run: where the answer was cut and continued, seam by seam."""
    not_resumed: str
    """Why a streamed run cut short mid-answer could not continue on another backend."""
    time_to_first_token: float
    """Seconds from the request to the first token."""
    tokens_per_second: float
    """Generated tokens per second of generation (eval_count / eval_duration)."""
    chunks: int
    """Pieces received."""
    thinking: str
    """The model's thinking, for models that think."""
    tool_calls: list[dict[str, Any]]
    """Tools the model called."""
    think_relaxed: bool
    """The request asked the model to think, the backend said the model cannot, and the
    run went on without `think` (`RequestPlan.relax_think`, as Ollama's Anthropic layer)."""

    # -- Ollama's own counters (nanoseconds and tokens), from the final reply ------------
    total_duration: int
    load_duration: int
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int
    done_reason: str

    # -- how it ended --------------------------------------------------------------------
    error_type: ErrorKind
    """Why it failed (see `ERROR_CLASSES`)."""
    error_status: int
    """The backend's HTTP status, when it answered with an error."""
    partial_response: str
    """What a failed run had produced before it failed."""
    status: Literal["cancelled"]
    """Set on a run its caller abandoned."""

    # -- where it is stored ----------------------------------------------------------------
    result_id: str
    """The stored run's id (`/gateway/results/{id}`)."""
    group_id: str
    """The stored batch, benchmark or comparison the run belongs to."""
    group_kind: GroupKind
    """Which of the three `group_id` names."""
    storage_error: str
    """Why the run could not be stored (the run itself is still answered)."""
