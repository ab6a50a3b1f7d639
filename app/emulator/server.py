"""The emulator's HTTP server: a raw ASGI app that answers like Ollama does.

Raw ASGI (no framework) keeps it fast and in full control of the bytes: status codes,
content types, key order and NDJSON flushing are Ollama's own (see the reference in
`shared/reference/ollama-api.md`). It shares no code with the gateway.

This module routes requests, applies the emulated faults and serves the control endpoints
(`/_emulator/faults`, `/_emulator/reset`, `/_emulator/state`). The Ollama endpoints are in
`model_endpoints.py` (tags, ps, show, pull, ...) and `inference.py` (generate, chat, embed),
which hand the writing of answers to an engine (`engine.py`: the filler or llama.cpp);
Anthropic's Messages API (`/v1/messages`) is `anthropic.py` and OpenAI's Responses API
(`/v1/responses`) `openai_responses.py`, both over the same chat. The faults apply to
`/api/*` and `/v1/*` requests alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from app.emulator import decoding
from app.emulator.anthropic import AnthropicEndpoint, send_anthropic_error
from app.emulator.audio import AudioEndpoints
from app.emulator.config import EmulatorConfig
from app.emulator.engine import Engine
from app.emulator.errors import CutConnection, OllamaError
from app.emulator.experimental import ExperimentalEndpoints
from app.emulator.filler import FillerEngine
from app.emulator.inference import InferenceEndpoints
from app.emulator.llama_engine import load_engine
from app.emulator.model_endpoints import ModelEndpoints
from app.emulator.openai_responses import ResponsesEndpoint
from app.emulator.responses import (
    TEXT_TYPE,
    Receive,
    Scope,
    Send,
    read_body,
    send_body,
    send_error,
    send_json,
)
from app.emulator.state import FAULT_TYPES, Faults, State

__all__ = ["Emulator", "create_emulator_app", "open_engine", "serve"]

Handler = Callable[[Scope, bytes, Send], Awaitable[None]]
ErrorWriter = Callable[[Send, OllamaError], Awaitable[None]]


def open_engine(config: EmulatorConfig) -> tuple[Engine, State]:
    """The engine `config.engine` names, and the state of a fresh emulator around it.

    The llama.cpp engine loads its model first: it names the model to install when
    `config.models` is empty."""
    if config.engine == "llama-cpp":
        engine = load_engine(config)
        return engine, State.fresh(config)
    if config.engine == "filler":
        state = State.fresh(config)
        return FillerEngine(state), state
    raise ValueError(f"unknown engine {config.engine!r} (filler or llama-cpp)")


class Emulator:
    """One emulated Ollama server (an ASGI app)."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.engine, self.state = open_engine(config)
        models = ModelEndpoints(config, self.state)
        inference = InferenceEndpoints(self.state, self.engine)
        audio = AudioEndpoints(self.state, partial(chat_reply, inference))
        experimental = ExperimentalEndpoints(self.state)
        responses = ResponsesEndpoint(inference)
        anthropic = AnthropicEndpoint(inference)
        self.error_writers: dict[str, ErrorWriter] = {"/v1/messages": send_anthropic_error}
        """Paths whose errors are not Ollama's `{"error"}` (default: `send_error`)."""
        self.routes: dict[str, dict[str, Handler]] = {
            "/": {"GET": models.root, "HEAD": models.root},
            "/api/version": {"GET": models.version, "HEAD": models.version},
            "/api/status": {"GET": experimental.status},
            "/api/experimental/model-recommendations": {"GET": experimental.model_recommendations},
            "/api/experimental/web_search": {"POST": experimental.web_search},
            "/api/experimental/web_fetch": {"POST": experimental.web_fetch},
            "/v1/audio/transcriptions": {"POST": audio.transcriptions},
            "/v1/audio/speech": {"POST": audio.speech},
            "/api/tags": {"GET": models.tags, "HEAD": models.tags},
            "/api/ps": {"GET": models.ps},
            "/api/show": {"POST": models.show},
            "/api/pull": {"POST": models.pull},
            "/api/delete": {"DELETE": models.delete},
            "/api/copy": {"POST": models.copy},
            "/api/generate": {"POST": inference.generate},
            "/api/chat": {"POST": inference.chat},
            "/api/embed": {"POST": inference.embed},
            "/api/embeddings": {"POST": inference.embeddings},
            "/v1/responses": {"POST": responses.create},
            "/v1/messages": {"POST": anthropic.messages},
            "/_emulator/faults": {"POST": self.set_faults},
            "/_emulator/reset": {"POST": self.reset},
            "/_emulator/state": {"GET": self.get_state},
            "/_emulator/engine": {"GET": self.engine_status},
        }

    # -- ASGI ------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if not path.startswith("/_emulator/"):
            names = sorted({name.decode("latin-1").lower() for name, _ in scope["headers"]})
            self.state.received.append({"method": method, "path": path, "headers": names})
        handlers = self.routes.get(path)
        if handlers is None:
            await send_body(send, 404, TEXT_TYPE, b"404 page not found")
            return
        handler = handlers.get(method)
        if handler is None:
            await send_body(send, 405, TEXT_TYPE, b"405 method not allowed")
            return
        body = await read_body(receive)
        send_failure = self.error_writers.get(path, send_error)
        if path.startswith(("/api/", "/v1/")):
            self.state.requests += 1
            faults = self.state.faults
            if faults.stall_ms > 0:
                await asyncio.sleep(faults.stall_ms / 1000)
            if faults.drop_connection > 0:
                faults.drop_connection -= 1
                await drop_connection(send, receive)
                return
            if faults.fail_next > 0:
                faults.fail_next -= 1
                await send_failure(send, OllamaError(faults.fail_status, faults.fail_message))
                return
        try:
            await handler(scope, body, send)
        except OllamaError as exc:
            await send_failure(send, exc)

    # -- control endpoints (outside /api/) --------------------------------------------

    async def set_faults(self, scope: Scope, body: bytes, send: Send) -> None:
        """Set faults and delays; nothing is applied unless the whole body is valid.

        Unknown fields and values of the wrong type (or negative numbers) are a 400; null
        puts a fault back to its default (off)."""
        req: Any = decoding.load(body) if body.strip() else {}
        if not isinstance(req, dict):
            raise OllamaError(400, "faults must be a JSON object")
        state = self.state
        unknown = sorted(set(req) - set(FAULT_TYPES) - set(DELAYS))
        if unknown:
            raise OllamaError(400, f"unknown fault field(s): {', '.join(unknown)}")
        faults, defaults = copy.copy(state.faults), Faults()
        for key, (kind, _) in FAULT_TYPES.items():
            if key in req:
                value = req[key]
                setattr(faults, key, getattr(defaults, key) if value is None
                        else checked(key, value, kind))  # fmt: skip
        if not 100 <= faults.fail_status <= 599:
            raise OllamaError(400, "invalid fault value: fail_status must be 100..599")
        delays = {key: float(checked(key, req[key], float)) if req[key] is not None else 0.0
                  for key in DELAYS if key in req}  # fmt: skip
        state.faults = faults
        state.token_delay_ms = delays.get("token_delay_ms", state.token_delay_ms)
        state.first_token_delay_ms = delays.get("first_token_delay_ms", state.first_token_delay_ms)
        state.prompt_eval_ms_per_token = delays.get(
            "prompt_eval_ms_per_token", state.prompt_eval_ms_per_token
        )
        await self.get_state(scope, b"", send)

    async def reset(self, scope: Scope, body: bytes, send: Send) -> None:
        self.state.reset()
        await self.get_state(scope, b"", send)

    async def engine_status(self, scope: Scope, body: bytes, send: Send) -> None:
        """The engine's state (`Engine.status`): 200 while it runs, 503 while it does not
        (a crashed llama.cpp runner restarting)."""
        status = self.engine.status()
        await send_json(send, status, 200 if status.get("state") == "running" else 503)

    async def get_state(self, scope: Scope, body: bytes, send: Send) -> None:
        await send_json(
            send,
            {
                "models": [m.display for m in self.state.installed.values()],
                "loaded": [e.installed.display for e in self.state.running()],
                "requests": self.state.requests,
                "received": list(self.state.received),
                "faults": self.state.faults.as_dict(),
                "token_delay_ms": self.state.token_delay_ms,
                "first_token_delay_ms": self.state.first_token_delay_ms,
                "prompt_eval_ms_per_token": self.state.prompt_eval_ms_per_token,
                "num_parallel": self.config.num_parallel,
                "waiting": self.state.waiting,
            },
        )


async def chat_reply(inference: InferenceEndpoints, body: bytes) -> dict[str, Any]:
    """`/api/chat`'s reply to `body` (`stream: false`), as the `/v1/audio` doors take it
    (Ollama's go through its chat handler too); `OllamaError` for an error reply."""
    sent: list[dict[str, Any]] = []

    async def keep(message: dict[str, Any]) -> None:
        sent.append(message)

    await inference.chat({}, body, keep)
    status = int(sent[0]["status"])
    reply = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    if status >= 400 or "error" in reply:
        raise OllamaError(status if status >= 400 else 500, str(reply.get("error")))
    return dict(reply)


async def drop_connection(send: Send, receive: Receive) -> None:
    """Close the connection without a byte of reply (the `drop_connection` fault).

    ASGI has no message for that: the transport is uvicorn's (the `send` callable is bound
    to the request cycle that holds it). Waiting for the disconnect tells uvicorn that
    nobody is left to answer, so it writes no 500 of its own."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    close = getattr(transport, "close", None)  # uvloop's transports are not asyncio's
    if not callable(close):
        raise CutConnection("emulated dropped connection (no transport to close)")
    close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(2):
            while (await receive())["type"] != "http.disconnect":
                pass


DELAYS = ("token_delay_ms", "first_token_delay_ms", "prompt_eval_ms_per_token")


def checked(key: str, value: object, kind: type) -> int | float | str:
    """A fault field's value if it has the right type (numbers: not negative), else a 400."""
    if kind is str:
        if isinstance(value, str):
            return value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise OllamaError(400, f"invalid fault value: {key} must be an integer")
        if value < 0:
            raise OllamaError(400, f"invalid fault value: {key} must not be negative")
        return int(value) if kind is int else float(value)
    name = {int: "an integer", float: "a number", str: "a string"}[kind]
    raise OllamaError(400, f"invalid fault value: {key} must be {name}")


def create_emulator_app(config: EmulatorConfig) -> Emulator:
    return Emulator(config)


def serve(config: EmulatorConfig) -> None:
    """Run the emulator under uvicorn until interrupted."""
    import sys

    import uvicorn

    print(
        f"Listening on {config.host}:{config.port} (version {config.version})",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        create_emulator_app(config),
        host=config.host,
        port=config.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )
