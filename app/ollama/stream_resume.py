"""Continuing a streamed answer on another backend when its backend fails mid-answer.

A streamed run whose caller has already received part of the answer cannot start over
elsewhere (the caller would see its beginning twice). When its backend fails (killed,
connection cut, an error line in the stream), another backend is asked to continue the
answer from where it stopped, as Ollama continues a chat whose last message is the
assistant's:

- chat: the same request with the partial answer added as a final assistant message
  (its thinking too, when the model was thinking);
- generate: the same through the chat form: the system prompt (if any) as a system
  message, the prompt as the user's, the partial answer as the assistant's. Ollama renders a
  generate's prompt through the model's template as a one-turn chat, so the continuation
  reads what the first backend read.

The caller's stream goes on after a pause with no piece repeated or lost at the seam. Where
continuation is not possible (see `resume_refusal`) the run fails as before, its partial
text kept, and `not_resumed` says why.

The counters of a resumed run add up: `eval_count` is the tokens the caller received
before each seam (one per streamed piece, as Ollama streams them) plus the last backend's
own `eval_count`; `eval_duration` and `total_duration` add the time measured at the
gateway for the backends that failed (they never sent their counters) to the last
backend's; `prompt_eval_count` and `prompt_eval_duration` are the last backend's (what it
read: the request and the partial answer).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from app.backends.errors import BackendError
from app.ollama.metadata import ResumePoint, RunMetadata
from app.ollama.run_spec import Kind, StreamAccumulator

__all__ = ["StreamResume", "continuation_body", "resume_refusal"]

#: Fields of a generate body that the chat form cannot carry.
_GENERATE_ONLY = frozenset({"prompt", "system", "images", "raw", "suffix", "template", "context"})
#: Generate fields that make a continuation impossible, and why.
_GENERATE_REFUSALS = (
    ("images", "the prompt has images"),
    ("raw", "a raw prompt has no template to continue it through"),
    ("suffix", "a fill-in-the-middle (suffix) reply cannot be continued"),
    ("template", "a request with its own template cannot be continued through the chat form"),
    ("context", "a generate with a token context cannot be continued through the chat form"),
)


def resume_refusal(kind: Kind, body: Mapping[str, Any], acc: StreamAccumulator) -> str | None:
    """Why a run cut short cannot continue on another backend; None when it can.

    `body` is the run's `/api/generate` or `/api/chat` request. Not continued: a run that
    already received tool calls, one whose input has images, a reply in a set `format`
    (the grammar would start the value over), and a generate the chat form cannot say
    (`raw`, `suffix`, `template`, `context`).
    """
    if acc.tool_calls:
        return "tool calls were already received"
    if body.get("format"):
        return "a reply in a set format cannot be continued"
    if kind == "generate":
        for key, why in _GENERATE_REFUSALS:
            if body.get(key):
                return why
        return None
    messages = body.get("messages")
    if isinstance(messages, list) and any(
        isinstance(m, Mapping) and m.get("images") for m in messages
    ):
        return "a message has images"
    return None


def continuation_body(
    kind: Kind, body: Mapping[str, Any], acc: StreamAccumulator
) -> dict[str, Any] | None:
    """The `/api/chat` body asking a backend to continue `acc`'s partial answer to `body`.

    Every field of `body` the chat form takes goes along (options, keep_alive, think,
    tools, ...); a `num_predict` counts what is left of it. None when `num_predict` is
    used up: the answer is complete, there is nothing to ask.
    """
    partial: dict[str, Any] = {"role": "assistant", "content": acc.text}
    if acc.thinking:
        partial["thinking"] = str(acc.thinking)
    if kind == "chat":
        given = body.get("messages")
        messages = [*(given if isinstance(given, list) else []), partial]
    else:
        messages = []
        if body.get("system"):
            messages.append({"role": "system", "content": str(body["system"])})
        messages += [{"role": "user", "content": str(body.get("prompt") or "")}, partial]
    out = {k: v for k, v in body.items() if k not in _GENERATE_ONLY and k != "stream"}
    out["messages"] = messages
    options = body.get("options")
    if isinstance(options, Mapping):
        limit = options.get("num_predict")
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            if limit - acc.fed <= 0:
                return None
            out["options"] = {**options, "num_predict": limit - acc.fed}
    return out


class StreamResume:
    """The seams of one streamed run: which backends wrote which part, and the counters.

    The owner calls `begin` as each backend is asked, `observe` after each chunk fed to the
    accumulator, `cut` when a backend fails after the caller received part of the answer,
    then `merged_final` with the last backend's final chunk and `metadata` for the result.
    """

    def __init__(self, acc: StreamAccumulator) -> None:
        self.acc = acc
        self.backends: list[str] = []
        self.seams: list[ResumePoint] = []
        self.carried_tokens = 0
        self.carried_eval_ns = 0
        self.carried_total_ns = 0
        self._backend = ""
        self._segment_fed = 0
        self._segment_started = time.perf_counter()
        self._first_at: float | None = None
        self._last_at: float | None = None
        self._seam_at: float | None = None

    @property
    def resumed(self) -> bool:
        return bool(self.seams)

    def begin(self, backend: str) -> None:
        """`backend` is asked (for the answer, or for its continuation)."""
        self._backend = backend
        self._segment_fed = self.acc.fed
        self._segment_started = time.perf_counter()
        self._first_at = self._last_at = None

    def observe(self) -> None:
        """Note the time of pieces fed since the last call (for the pause and durations)."""
        at = self.acc.last_fed_at
        if self.acc.fed == self._segment_fed or at is None:
            return
        if self._first_at is None:
            self._first_at = at
            if self.seams:
                self._wrote()
                if self.seams[-1]["pause"] is None and self._seam_at is not None:
                    self.seams[-1]["pause"] = at - self._seam_at
        self._last_at = at

    def cut(self, error: BackendError) -> None:
        """The current backend failed; what it wrote is kept and carried into the counts."""
        now = time.perf_counter()
        self.carried_total_ns += int((now - self._segment_started) * 1e9)
        if self.acc.fed > self._segment_fed:
            self._wrote()
            if self._first_at is not None and self._last_at is not None:
                self.carried_eval_ns += int((self._last_at - self._first_at) * 1e9)
            self._seam_at = self.acc.last_fed_at
            self.seams.append(
                ResumePoint(
                    backend=self._backend,
                    error=str(error),
                    after_tokens=self.acc.fed,
                    after_chars=len(self.acc.text),
                    pause=None,
                )
            )
        self.carried_tokens = self.acc.fed

    def merged_final(self, final: Mapping[str, Any] | None) -> dict[str, Any]:
        """The last backend's final chunk with the counters of the whole answer."""
        merged = dict(final or {"done": True})
        for key, carried in (
            ("eval_count", self.carried_tokens),
            ("eval_duration", self.carried_eval_ns),
            ("total_duration", self.carried_total_ns),
        ):
            own = merged.get(key)
            if isinstance(own, int) and not isinstance(own, bool):
                merged[key] = own + carried
            elif key == "eval_count":
                merged[key] = carried + self.acc.fed - self._segment_fed
        return merged

    def final_at_limit(self) -> dict[str, Any]:
        """The final chunk of an answer cut where its `num_predict` ran out: complete."""
        return {"done": True, "done_reason": "length", "eval_count": self.acc.fed}

    def finished(self) -> None:
        """The current backend ended the answer."""
        if self.resumed:
            self._wrote()

    def _wrote(self) -> None:
        """The current backend wrote part of the answer."""
        if not self.backends or self.backends[-1] != self._backend:
            self.backends.append(self._backend)

    def metadata(self) -> RunMetadata:
        """What a result says of its seams (nothing for a run that was not resumed). Its
        lists are this object's own, so a run stopped later (cancelled, failed again) is
        described as it is then."""
        if not self.resumed:
            return {}
        return {"resumed": True, "backends": self.backends, "resumes": self.seams}
