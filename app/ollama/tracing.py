"""The spans of a run: the pool's choice and the backend call, with the GenAI conventions.

A run (a generation or a chat, on any surface) gets one span named `{operation} {model}`
(kind client) with the OpenTelemetry GenAI semantic conventions: `gen_ai.operation.name`
(`text_completion` or `chat`), `gen_ai.system` = `ollama`, `gen_ai.request.model` and
the request's sampling parameters, then `gen_ai.response.model`,
`gen_ai.response.finish_reasons`, `gen_ai.usage.input_tokens` and
`gen_ai.usage.output_tokens` (Ollama's `prompt_eval_count` and `eval_count`, as stored),
and a `gen_ai.first_token` event at the first token. The HTTP request to the backend
(its client span: httpx's instrumentation, or the aiohttp calls' own) is its child, so the `traceparent` the backend receives names
it. Prompts and answers (`gen_ai.input.messages`, `gen_ai.output.messages`) only with
`GATEWAY_TRACE_CONTENT=true`.

The pool's choice is a `gateway.pool.choose` span: the candidates in rank order (with the
prefix index: the expected time to first token of the chosen one and of the runner-up,
`gateway.pool.expected_ttft` and `gateway.pool.expected_ttft_runner_up`), the
chosen backend and the time waited for one of its slots; a failover is an event on the
run's span. All of it costs one global check when tracing is off (`app.observability.telemetry`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from app.observability import telemetry
from app.ollama.run_spec import RunSpec, StreamAccumulator
from app.ollama.types import ModelExecutionResult

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from app.backends.prefix import Prompt
    from app.backends.state import BackendState

__all__ = ["backend_chosen", "choice_span", "failover", "finish_run_span", "start_run_span"]

OPERATIONS = {"generate": "text_completion", "chat": "chat"}
# Ollama option -> GenAI request attribute.
REQUEST_OPTIONS = {
    "num_predict": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "top_k": "gen_ai.request.top_k",
    "seed": "gen_ai.request.seed",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
}


def start_run_span(spec: RunSpec, *, surface: str | None = None) -> Span | None:
    """The run's span, started now under the current one (None when tracing is off)."""
    if not telemetry.enabled():
        return None
    operation = OPERATIONS.get(spec.kind, spec.kind)
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.system": "ollama",
        "gen_ai.provider.name": "ollama",
        "gen_ai.request.model": spec.model,
    }
    if surface:
        attributes["gateway.surface"] = surface
    for option, name in REQUEST_OPTIONS.items():
        value = spec.plan.options.get(option)
        if isinstance(value, int | float) and not isinstance(value, bool):
            attributes[name] = value
    stop = spec.plan.options.get("stop")
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        attributes["gen_ai.request.stop_sequences"] = stop
    if telemetry.content_enabled():
        attributes["gen_ai.input.messages"] = json.dumps(_input_messages(spec), ensure_ascii=False)
    return telemetry.start_span(f"{operation} {spec.model}", attributes, kind="client")


def finish_run_span(
    span: Span | None, spec: RunSpec, acc: StreamAccumulator, result: ModelExecutionResult
) -> None:
    """Response attributes, usage and the first-token event from the finished (stored)
    result; then the span ends, with an error status for a failed run."""
    if span is None:
        return
    meta = result.metadata or {}
    final = acc.final or {}
    attributes: dict[str, Any] = {
        "gen_ai.response.model": str(final.get("model") or result.model_name),
    }
    for key, name in (
        ("prompt_eval_count", "gen_ai.usage.input_tokens"),
        ("eval_count", "gen_ai.usage.output_tokens"),
    ):
        value = meta.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            attributes[name] = value
    if meta.get("done_reason"):
        attributes["gen_ai.response.finish_reasons"] = [str(meta["done_reason"])]
    if meta.get("backend"):
        attributes["gateway.backend.url"] = str(meta["backend"])
        parts = urlsplit(str(meta["backend"]))
        if parts.hostname:
            attributes["server.address"] = parts.hostname
        if parts.port:
            attributes["server.port"] = parts.port
    ttft = meta.get("time_to_first_token")
    if isinstance(ttft, int | float):
        attributes["gateway.time_to_first_token"] = float(ttft)
    tps = meta.get("tokens_per_second")
    if isinstance(tps, int | float):
        attributes["gateway.tokens_per_second"] = float(tps)
    if "chunks" in meta:
        attributes["gateway.chunks"] = int(meta["chunks"])
    if telemetry.content_enabled():
        text = result.response if result.success else str(meta.get("partial_response") or "")
        output: dict[str, Any] = {
            "role": "assistant",
            "parts": [{"type": "text", "content": text}],
        }
        if meta.get("done_reason"):
            output["finish_reason"] = str(meta["done_reason"])
        attributes["gen_ai.output.messages"] = json.dumps([output], ensure_ascii=False)
    if not result.success:
        attributes["error.type"] = str(meta.get("error_type") or "BackendError")
    telemetry.set_attributes(attributes, on=span)
    if acc.first_token_at is not None:
        telemetry.add_event(
            "gen_ai.first_token",
            {"gen_ai.response.time_to_first_token": acc.time_to_first_token or 0.0},
            on=span,
            timestamp=telemetry.monotonic_to_ns(acc.first_token_at),
        )
    telemetry.end_span(span, None if result.success else (result.error_message or "failed"))


def choice_span(model: str | None) -> Span | None:
    """The pool's choice for a run of `model`: started before the candidates are ranked,
    ended when a backend's slot is held (`backend_chosen`)."""
    if not telemetry.enabled():
        return None
    return telemetry.start_span("gateway.pool.choose", {"gen_ai.request.model": model or ""})


def candidates_ranked(span: Span | None, candidates: Sequence[BackendState]) -> None:
    if span is not None:
        telemetry.set_attributes(
            {"gateway.pool.candidates": [s.spec.name for s in candidates]}, on=span
        )


def backend_chosen(
    choice: Span | None,
    run: Span | None,
    state: BackendState,
    asked_at: float,
    attempt: int,
    prompt: Prompt | None = None,
) -> None:
    """A slot of `state` is held after waiting since `asked_at` (`time.perf_counter`):
    the choice span ends there (the first attempt), or the run's span notes it (one after a
    failover). With the prefix index's `prompt`: the expected time to first token of the
    chosen backend and of the best other one, and the prompt tokens expected cached."""
    if not telemetry.enabled():
        return
    attributes: dict[str, Any] = {
        "gateway.pool.chosen": state.spec.name,
        "gateway.pool.queue_wait": time.perf_counter() - asked_at,
        "gateway.pool.attempt": attempt,
    }
    if prompt is not None and state.spec.name in prompt.estimates:
        chosen = prompt.estimates[state.spec.name]
        others = [e.ttft for name, e in prompt.estimates.items() if name != state.spec.name]
        attributes["gateway.pool.expected_ttft"] = chosen.ttft
        attributes["gateway.pool.cached_tokens"] = round(chosen.cached)
        attributes["gateway.pool.prompt_tokens"] = round(prompt.tokens)
        if others:
            attributes["gateway.pool.expected_ttft_runner_up"] = min(others)
    if choice is not None and choice.is_recording():
        telemetry.set_attributes(attributes, on=choice)
        telemetry.end_span(choice)
    else:
        telemetry.add_event("gateway.pool.chosen", attributes, on=run)
    telemetry.set_attributes({"gateway.backend": state.spec.name}, on=run)


def failover(run: Span | None, state: BackendState, error: BaseException) -> None:
    """`state` failed the run, which goes on to the next candidate."""
    if telemetry.enabled():
        telemetry.add_event(
            "gateway.failover",
            {
                "gateway.backend": state.spec.name,
                "error.type": type(error).__name__,
                "gateway.error": str(error)[:500],
            },
            on=run,
        )


def _input_messages(spec: RunSpec) -> list[dict[str, Any]]:
    if spec.kind == "chat" and spec.messages:
        return [
            {"role": m.get("role"), "parts": [{"type": "text", "content": m.get("content")}]}
            for m in spec.messages
        ]
    messages: list[dict[str, Any]] = []
    if spec.plan.system:
        messages.append(
            {"role": "system", "parts": [{"type": "text", "content": spec.plan.system}]}
        )
    messages.append({"role": "user", "parts": [{"type": "text", "content": spec.prompt}]})
    return messages
