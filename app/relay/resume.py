"""`RelayResume`: a relayed `/api/generate` or `/api/chat` stream continued elsewhere.

The `/api` surface passes the backend's lines on as they come. When that backend fails
mid-stream (the connection cut, or an `{"error": ...}` line after part of the answer), the
relay asks another backend to continue the answer (`app.ollama.stream_resume`) and passes
its lines on in the shape of the client's request: a generate's continuation (asked through
the chat form) comes as generate lines (`response`), a chat's as chat lines. The final
line's counters are those of the whole answer. A generate's final line then has no
`context` (the chat form gives none). When the first backend failed before any piece of
the answer, the request is sent again as it was and the new backend's lines passed on.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from app.backends.errors import BackendBusy, BackendError
from app.backends.pool import BackendPool, BackendState
from app.ollama.run_spec import Kind, RunSpec, StreamAccumulator
from app.ollama.stream_resume import StreamResume, continuation_body, resume_refusal

__all__ = ["RelayResume", "line_as"]


def _go_json(value: Any) -> bytes:
    """One NDJSON line as Ollama's Go server writes it: compact, `<>&` escaped."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return text.encode() + b"\n"


def line_as(kind: Kind, chunk: Mapping[str, Any]) -> dict[str, Any]:
    """A chat stream's line in the shape of a `kind` stream's line (a generate line:
    `response` and `thinking` in place of `message`, the other keys in their order)."""
    if kind == "chat" or "message" not in chunk:
        return dict(chunk)
    line: dict[str, Any] = {}
    for key, value in chunk.items():
        if key != "message":
            line[key] = value
            continue
        message = value if isinstance(value, Mapping) else {}
        line["response"] = str(message.get("content") or "")
        if message.get("thinking"):
            line["thinking"] = message["thinking"]
    return line


class RelayResume:
    """Continues one relayed run on the pool's other backends, when its backend fails.

    `first` is the backend the reply came from and `release_first` gives its request slot
    back; `others` are the run's next candidates, tried in turn (as `RunExecutor` tries a
    run's candidates, chosen when the run began); `backend` is the run's backend as the
    stored result names it (updated to the backend that finished the answer).
    """

    def __init__(
        self,
        pool: BackendPool,
        spec: RunSpec,
        acc: StreamAccumulator,
        body: Mapping[str, Any],
        *,
        first: BackendState,
        release_first: Callable[[], Awaitable[None]],
        others: list[BackendState],
        backend: list[str],
        timeout: float,
    ) -> None:
        self.pool = pool
        self.spec = spec
        self.acc = acc
        self.body = body
        self.first = first
        self.release_first = release_first
        self.backend = backend
        self.others = others
        self.timeout = timeout
        self.resume = StreamResume(acc)
        self.resume.begin(first.spec.url)

    async def lines(self, error: BackendError) -> AsyncGenerator[tuple[bytes, bool], None]:
        """The lines that take the place of the failed reply's rest, each with whether it
        is the final one; raises a `BackendError` when the run cannot go on."""
        kind = self.spec.kind
        await self.release_first()
        self.pool.record_failure(self.first, error)
        previous = self.first
        failed_over: list[str] = []
        for state in [*self.others, None]:
            refusal = resume_refusal(kind, self.body, self.acc) if self.acc.fed > 0 else None
            if refusal is not None:
                self.spec.metadata["not_resumed"] = refusal
                raise error
            continued = continuation_body(kind, self.body, self.acc) if self.acc.fed else None
            if self.acc.fed > 0 and continued is None:  # num_predict ran out: complete
                self.resume.cut(error)
                self.spec.metadata.update(self.resume.metadata())
                self.acc.final = self.resume.final_at_limit()
                yield _go_json(self._final_line()), True
                return
            if state is None:
                break
            failed_over.append(f"{previous.spec.url}: {error}")
            self.spec.metadata["failed_over_from"] = failed_over
            if continued is not None:
                self.resume.cut(error)
                self.spec.metadata.update(self.resume.metadata())
                path, payload = "/api/chat", continued
            else:
                path, payload = f"/api/{kind}", dict(self.body)
            try:
                async with contextlib.aclosing(self._from(state, path, payload)) as more:
                    async for line in more:
                        yield line
                self.pool.record_success(state)
                return
            except BackendError as exc:
                if not isinstance(exc, BackendBusy):
                    self.pool.record_failure(state, exc)
                previous, error = state, exc
        if self.acc.fed > 0:
            self.spec.metadata["not_resumed"] = "no other backend to continue on"
        raise error

    async def _from(
        self, state: BackendState, path: str, payload: dict[str, Any]
    ) -> AsyncGenerator[tuple[bytes, bool], None]:
        """`state`'s reply to `payload`, as lines of the client's kind."""
        kind = self.spec.kind
        async with self.pool.lease(state):
            self.resume.begin(state.spec.url)
            self.backend[:] = [state.spec.url]
            stream = state.client.stream(path, payload, timeout=self.timeout, require_done=True)
            async with contextlib.aclosing(stream) as chunks:
                async for chunk in chunks:
                    self.acc.feed_ollama_chunk("chat" if path == "/api/chat" else kind, chunk)
                    self.resume.observe()
                    if chunk.get("done") is not True:
                        yield _go_json(line_as(kind, chunk)), False
                        continue
                    if self.resume.resumed:
                        self.resume.finished()
                        self.acc.final = self.resume.merged_final(self.acc.final)
                        self.spec.metadata.update(self.resume.metadata())
                    yield _go_json(line_as(kind, self.acc.final or chunk)), True

    def _final_line(self) -> dict[str, Any]:
        """The final line of an answer complete at the seam (its `num_predict` used up)."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        line: dict[str, Any] = {"model": self.body.get("model"), "created_at": now}
        if self.spec.kind == "generate":
            line["response"] = ""
        else:
            line["message"] = {"role": "assistant", "content": ""}
        return {**line, **(self.acc.final or {})}
