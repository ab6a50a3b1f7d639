"""The inference endpoints: /api/generate, /api/chat, /api/embed and /api/embeddings.

Each handler checks its request as Ollama does (names, options, think, format, model
capabilities), keeps the loaded-model bookkeeping, then hands the work to the engine
(`engine.Engine`) and writes what comes back in Ollama's wire format (`responses.py`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Literal

from app.emulator.audio import transcript_events, transcription_audio
from app.emulator.engine import EmbedJob, Engine, Event, GenerationJob, Piece
from app.emulator.errors import OllamaError, go_quote, json_type
from app.emulator.names import ModelName, parse
from app.emulator.parsing import (
    check_format,
    check_options,
    check_think,
    keep_alive_ns,
    parse_body,
)
from app.emulator.responses import (
    Scope,
    Send,
    lines_of,
    send_cut_body,
    send_json,
    single_reply,
    stream_objects,
)
from app.emulator.state import Faults, Installed, State
from app.emulator.wire import dumps, utc_now

__all__ = ["InferenceEndpoints"]

JSON = dict[str, Any]
Kind = Literal["generate", "chat"]


async def token_faults(events: AsyncIterator[Event], faults: Faults) -> AsyncIterator[Event]:
    """A generation's events with the per-token faults applied: `slow_ms` before each
    piece, the `stall_after_tokens` pause, the `fail_after_tokens` failure (an
    `OllamaError(500)` in place of whatever would come after N pieces). The faults are
    read as each event comes, so a change made mid-reply applies at once."""
    tokens = 0
    async for event in events:
        if faults.fail_after_tokens is not None and tokens >= faults.fail_after_tokens:
            raise OllamaError(500, faults.fail_message)
        if isinstance(event, Piece) and faults.slow_ms > 0:
            await asyncio.sleep(faults.slow_ms / 1000)
        yield event
        if isinstance(event, Piece):
            tokens += 1
            if tokens == faults.stall_after_tokens and faults.stall_after_tokens_ms > 0:
                await asyncio.sleep(faults.stall_after_tokens_ms / 1000)


def token_context(value: Any) -> list[int]:
    """A generate request's `context`: token ids (a 400 as Go's decoder words it otherwise)."""
    if value is None:
        return []
    ids = []
    for item in value:
        if not isinstance(item, int) or isinstance(item, bool):
            raise OllamaError(
                400,
                f"json: cannot unmarshal {json_type(item)} into Go struct field "
                "GenerateRequest.context of type int",
            )
        ids.append(item)
    return ids


class InferenceEndpoints:
    """The handlers of the inference endpoints, over one emulator's state and engine."""

    def __init__(self, state: State, engine: Engine) -> None:
        self.state = state
        self.engine = engine

    # -- generate and chat -----------------------------------------------------------

    def target(self, req: JSON, *, kind: Kind) -> tuple[str, ModelName, Installed]:
        """The requested name as sent, and the installed model it means."""
        raw = str(req.get("model") or "")
        if not raw:
            if kind == "generate":
                raise OllamaError(404, "model '' not found")
            raise OllamaError(400, "model is required")
        name = parse(raw)
        if name is None:
            if kind == "generate":
                raise OllamaError(400, "invalid model name")
            raise OllamaError(404, f"model '{raw}' not found")
        installed = self.state.find(name)
        if installed is None:
            raise OllamaError(404, f"model '{raw}' not found")
        return raw, name, installed

    async def generate(self, scope: Scope, body: bytes, send: Send) -> None:
        req = parse_body(body, "GenerateRequest")
        raw, name, installed = self.target(req, kind="generate")
        await self.infer(send, req, "generate", raw, name, installed)

    async def chat(self, scope: Scope, body: bytes, send: Send) -> None:
        req = parse_body(body, "ChatRequest")
        raw, name, installed = self.target(req, kind="chat")
        await self.infer(send, req, "chat", raw, name, installed)

    @staticmethod
    def generate_input(req: JSON, raw: str, name: ModelName, installed: Installed) -> str:
        """A generate request's prompt, once the model can take the request."""
        spec = installed.spec
        if req.get("raw") and (req.get("template") or req.get("system") or req.get("context")):
            raise OllamaError(400, "raw mode does not support template, system, or context")
        if spec.is_embedding:
            raise OllamaError(400, f"{go_quote(raw)} does not support generate")
        if req.get("suffix") and "insert" not in spec.capabilities:
            raise OllamaError(400, f"{name.full} does not support insert")
        return str(req.get("prompt") or "")

    @staticmethod
    def chat_input(req: JSON, raw: str, name: ModelName, installed: Installed) -> list[JSON]:
        """A chat request's messages, once they are objects and the model can take them."""
        spec = installed.spec
        messages = list(req.get("messages") or [])
        if spec.is_embedding:
            raise OllamaError(400, f"{go_quote(raw)} does not support chat")
        for m in messages:
            if not isinstance(m, dict):
                raise OllamaError(
                    400,
                    f"json: cannot unmarshal {json_type(m)} into Go struct field "
                    "ChatRequest.messages of type api.Message",
                )
        if req.get("tools") and "tools" not in spec.capabilities:
            raise OllamaError(400, f"{name.full} does not support tools")
        return messages

    def prepare(
        self, req: JSON, kind: Kind, raw: str, name: ModelName, installed: Installed
    ) -> GenerationJob | JSON:
        """Check a generate or chat request: the job for the engine, or (a request with
        nothing to generate) the whole reply of loading or unloading the model."""
        spec = installed.spec
        options = check_options(req.get("options"))
        keep_alive = keep_alive_ns(req.get("keep_alive"))
        think = check_think(req.get("think"))
        wants_json, schema = check_format(req.get("format"))
        top_logprobs = req.get("top_logprobs")
        if isinstance(top_logprobs, int) and not 0 <= top_logprobs <= 20:
            raise OllamaError(400, "top_logprobs must be between 0 and 20")
        num_ctx = int(options.get("num_ctx") or 4096)

        prompt = ""
        messages: list[JSON] = []
        if kind == "generate":
            prompt = self.generate_input(req, raw, name, installed)
            empty = not prompt and not req.get("images")
        else:
            messages = self.chat_input(req, raw, name, installed)
            empty = not messages

        if think is not None and think is not False and "thinking" not in spec.capabilities:
            raise OllamaError(400, f"{go_quote(raw)} does not support thinking")

        if empty:
            reason = "unload" if keep_alive == 0 else "load"
            self.state.touch_loaded(name, installed, keep_alive, num_ctx)
            reply: JSON = {"model": raw, "created_at": utc_now()}
            if kind == "generate":
                reply["response"] = ""
            else:
                reply["message"] = {"role": "assistant", "content": ""}
            reply.update({"done": True, "done_reason": reason})
            return reply

        cold = not self.state.was_loaded(name)
        self.state.touch_loaded(name, installed, keep_alive, num_ctx)
        return GenerationJob(
            kind=kind,
            spec=spec,
            prompt=prompt,
            system=str(req.get("system") or ""),
            raw=bool(req.get("raw")),
            messages=messages,
            tools=list(req.get("tools") or []),
            options=options,
            think=think,
            wants_json=wants_json,
            schema=schema,
            stream=req.get("stream") is not False,
            cold=cold,
            cache=self.state.prompt_cache(name),
            context=token_context(req.get("context")) if kind == "generate" else [],
        )

    async def events(self, job: GenerationJob) -> AsyncIterator[Event]:
        """The engine's events of `job` (a transcription's transcript, whatever the engine),
        with the emulated per-token faults."""
        audio = transcription_audio(job.spec, job.messages) if job.kind == "chat" else None
        if audio is not None:
            return token_faults(transcript_events(audio, job.cold, self.state), self.state.faults)
        return token_faults(await self.engine.generate(job), self.state.faults)

    async def infer(
        self, send: Send, req: JSON, kind: Kind, raw: str, name: ModelName, installed: Installed
    ) -> None:
        """Check a generate or chat request, then answer it (or load / unload the model)."""
        job = self.prepare(req, kind, raw, name, installed)
        if not isinstance(job, GenerationJob):
            await send_json(send, job)
            return
        async with self.state.slot(name):  # `num_parallel` runs at once; more wait here
            await self.answer(send, job, raw)

    async def answer(self, send: Send, job: GenerationJob, raw: str) -> None:
        """Write `job`'s events as Ollama does (streamed unless the request said not to)."""
        kind = job.kind
        events = await self.events(job)
        cut = self.state.faults.cut_after_chunks
        if job.stream:
            await stream_objects(send, lines_of(kind, raw, events), cut_after=cut)
        elif cut is not None:
            # One body, cut part-way through: what a client sees of a server (or a network
            # path) that dies while sending a non-streamed reply.
            await send_cut_body(send, dumps(await single_reply(kind, raw, events)))
        else:
            await send_json(send, await single_reply(kind, raw, events))

    # -- embeddings ------------------------------------------------------------------

    def embedding_target(
        self, req: JSON, *, kind: Literal["embed", "embeddings"]
    ) -> tuple[str, ModelName, Installed]:
        """`target` for /api/embed and the older /api/embeddings: the requested name as
        sent, and the installed model it means (found as `State.resolve` finds it)."""
        raw = str(req.get("model") or "")
        if not raw:
            if kind == "embed":
                raise OllamaError(404, "model '' not found")
            raise OllamaError(400, "model is required")
        found = self.state.resolve(raw)
        if found is None:
            raise OllamaError(404, f"model {go_quote(raw)} not found, try pulling it first")
        name, installed = found
        return raw, name, installed

    async def embed(self, scope: Scope, body: bytes, send: Send) -> None:
        req = parse_body(body, "EmbedRequest")
        raw, name, installed = self.embedding_target(req, kind="embed")
        check_options(req.get("options"))
        inputs = req.get("input")
        if inputs is None or inputs == "" or inputs == []:
            await send_json(send, {"model": raw, "embeddings": []})
            return
        items = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise OllamaError(400, "invalid input type")
        self.engine.check_embed(installed.spec, items, req.get("truncate") is not False)
        cold = not self.state.was_loaded(name)
        self.state.touch_loaded(name, installed, keep_alive_ns(req.get("keep_alive")), 2048)
        wanted = req.get("dimensions")
        dimensions = wanted if isinstance(wanted, int) else None
        result = await self.engine.embed(EmbedJob(installed.spec, items, dimensions, cold))
        await send_json(
            send,
            {
                "model": raw,
                "embeddings": result.vectors,
                "total_duration": result.total_duration,
                "load_duration": result.load_duration,
                "prompt_eval_count": result.prompt_eval_count,
            },
        )

    async def embeddings(self, scope: Scope, body: bytes, send: Send) -> None:
        req = parse_body(body, "EmbeddingRequest")
        _, name, installed = self.embedding_target(req, kind="embeddings")
        check_options(req.get("options"))
        prompt = str(req.get("prompt") or "")
        if not prompt:
            await send_json(send, {"embedding": []})
            return
        self.state.touch_loaded(name, installed, keep_alive_ns(req.get("keep_alive")), 2048)
        await send_json(send, {"embedding": await self.engine.embedding(installed.spec, prompt)})
