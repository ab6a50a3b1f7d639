"""Relaying Ollama's own API through the pool, unparsed, while keeping a record of runs.

The `/api` surface must look exactly like Ollama: the backend's status, headers and bytes
go to the client as they come (NDJSON line by line, nothing buffered past a line end).
For `/api/generate` and `/api/chat` the lines are also read on the side, so the run is
stored like any other: when the final `done` line arrives it is stored before that line is
passed on (a client that has read the whole reply can find the stored run), and a reply
cut short by the backend or left by the client is stored as failed or cancelled with
its partial text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from app.backends.errors import BackendError
from app.ollama._execution import Kind, RunSpec, StreamAccumulator
from app.ollama.options import RequestPlan
from app.ollama.types import ModelExecutionResult

__all__ = ["Relayed", "RunRecorder", "spec_of_body"]

#: Request fields of `/api/generate` and `/api/chat` that are neither the input nor options.
_PLAN_FIELDS = ("format", "keep_alive", "think", "tools", "raw", "suffix", "template")


@dataclass
class Relayed:
    """A backend's reply on its way to the client; `body` must be consumed or closed."""

    status: int
    headers: dict[str, str]
    body: AsyncIterator[bytes]
    backend: str | None = None
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def aclose(self) -> None:
        """Release the backend connection and slot without reading the rest."""
        aclose = getattr(self.body, "aclose", None)
        if aclose is not None:
            await aclose()
        for closer in reversed(self._closers):
            await closer()
        self._closers.clear()

    async def read(self, limit: int = 64 << 20) -> bytes:
        """The whole body (for small replies: tags, show, errors)."""
        parts: list[bytes] = []
        size = 0
        try:
            async for piece in self.body:
                parts.append(piece)
                size += len(piece)
                if size > limit:
                    raise BackendError(f"backend reply over {limit} bytes", status=502)
        finally:
            await self.aclose()
        return b"".join(parts)


def spec_of_body(kind: Kind, body: dict[str, Any], surface: str) -> RunSpec | None:
    """What a raw generate/chat body asks for, as a `RunSpec` for the stored record.

    Nothing is validated (the backend answers for the body as sent); None when there is
    no model name to file the run under.
    """
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return None
    options = body.get("options")
    plan = RequestPlan(
        options=dict(options) if isinstance(options, dict) else {},
        system=body.get("system") if isinstance(body.get("system"), str) else None,
        format=body.get("format") if isinstance(body.get("format"), str | dict) else None,
        keep_alive=body.get("keep_alive"),
        stream=body.get("stream") is not False,
    )
    metadata: dict[str, Any] = {"surface": surface}
    extra = {k: body[k] for k in _PLAN_FIELDS if k in body and k not in ("format", "keep_alive")}
    if extra:
        metadata["request_extra"] = extra
    messages: list[dict[str, Any]] | None = None
    if kind == "generate":
        prompt = body.get("prompt") if isinstance(body.get("prompt"), str) else ""
    else:
        raw = body.get("messages")
        messages = [m for m in raw if isinstance(m, dict)] if isinstance(raw, list) else []
        prompt = next(
            (
                str(m.get("content") or "")
                for m in reversed(messages)
                if str(m.get("role", "")).lower() == "user"
            ),
            "",
        )
    return RunSpec(
        kind=kind, model=model, prompt=str(prompt), plan=plan, messages=messages, metadata=metadata
    )


BuildResult = Callable[..., ModelExecutionResult]
"""Called as `build(spec=, acc=, error=, error_type=, error_status=)`."""
StoreResult = Callable[[ModelExecutionResult], Awaitable[object]]


class RunRecorder:
    """Reads a relayed generate/chat reply on the side and stores the run once."""

    def __init__(self, spec: RunSpec, status: int, build: BuildResult, store: StoreResult) -> None:
        self.spec = spec
        self.status = status
        self.acc = StreamAccumulator()
        self.build = build
        self.store = store
        self.stored = False
        self.error: str | None = None

    def feed(self, line: bytes) -> bool:
        """Take one line (or the whole non-streamed reply); True when it ends the run."""
        try:
            chunk = json.loads(line)
        except ValueError:
            return False
        if not isinstance(chunk, dict):
            return False
        if "error" in chunk:
            self.error = str(chunk["error"])
            return True
        self.acc.feed_ollama_chunk(self.spec.kind, chunk)
        return chunk.get("done") is True

    async def finish(
        self, error: str | None = None, error_type: str | None = None
    ) -> ModelExecutionResult | None:
        if self.stored:
            return None
        self.stored = True
        error = error or self.error
        if error is None and self.status >= 400:
            error = f"HTTP {self.status}"
        if error is None and self.acc.final is None:
            error, error_type = "the backend's reply ended before its final line", "Incomplete"
        if error is not None and error_type is None:
            error_type = "BackendError"
        status = self.status if self.status >= 400 else None
        result = self.build(
            spec=self.spec, acc=self.acc, error=error, error_type=error_type, error_status=status
        )
        await asyncio.shield(self.store(result))
        return result

    async def tee(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Pass `body` on line by line, storing the run at its end (see the module doc)."""
        buffer = b""
        try:
            async for piece in body:
                buffer += piece
                while (cut := buffer.find(b"\n")) >= 0:
                    line, buffer = buffer[: cut + 1], buffer[cut + 1 :]
                    if self.feed(line):
                        await self.finish()
                    yield line
            if buffer:
                if self.feed(buffer):
                    await self.finish()
                yield buffer
            await self.finish()
        except BackendError as exc:
            await self.finish(str(exc), type(exc).__name__)
            yield json.dumps({"error": str(exc)}).encode() + b"\n"
        except (asyncio.CancelledError, GeneratorExit):
            with contextlib.suppress(Exception):
                await self.finish("the client left before the run finished", "Cancelled")
            raise
