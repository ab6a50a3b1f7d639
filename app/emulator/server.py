"""The emulator's HTTP server: a raw ASGI app that answers like Ollama does.

Raw ASGI (no framework) keeps it fast and in full control of the bytes: status codes,
content types, key order and NDJSON flushing are Ollama's own (see the reference in
`shared/reference/ollama-api.md`). It shares no code with the gateway.

This module routes requests, applies the emulated faults and serves the control endpoints
(`/_emulator/faults`, `/_emulator/reset`, `/_emulator/state`). The Ollama endpoints are in
`model_endpoints.py` (tags, ps, show, pull, ...) and `inference.py` (generate, chat, embed),
which hand the writing of answers to an engine (`engine.py`: the filler or llama.cpp).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from typing import Any

from app.emulator import decoding
from app.emulator.config import EmulatorConfig
from app.emulator.engine import Engine
from app.emulator.errors import OllamaError
from app.emulator.filler import FillerEngine
from app.emulator.inference import InferenceEndpoints
from app.emulator.llama_engine import load_engine
from app.emulator.model_endpoints import ModelEndpoints
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
from app.emulator.state import State

__all__ = ["Emulator", "create_emulator_app", "open_engine", "serve"]

Handler = Callable[[Scope, bytes, Send], Awaitable[None]]


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
        self.routes: dict[str, dict[str, Handler]] = {
            "/": {"GET": models.root, "HEAD": models.root},
            "/api/version": {"GET": models.version, "HEAD": models.version},
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
            "/_emulator/faults": {"POST": self.set_faults},
            "/_emulator/reset": {"POST": self.reset},
            "/_emulator/state": {"GET": self.get_state},
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
        handlers = self.routes.get(path)
        if handlers is None:
            await send_body(send, 404, TEXT_TYPE, b"404 page not found")
            return
        handler = handlers.get(method)
        if handler is None:
            await send_body(send, 405, TEXT_TYPE, b"405 method not allowed")
            return
        body = await read_body(receive)
        if path.startswith("/api/"):
            self.state.requests += 1
            faults = self.state.faults
            if faults.stall_ms > 0:
                await asyncio.sleep(faults.stall_ms / 1000)
            if faults.fail_next > 0:
                faults.fail_next -= 1
                await send_error(send, OllamaError(faults.fail_status, faults.fail_message))
                return
        try:
            await handler(scope, body, send)
        except OllamaError as exc:
            await send_error(send, exc)

    # -- control endpoints (outside /api/) --------------------------------------------

    async def set_faults(self, scope: Scope, body: bytes, send: Send) -> None:
        """Set faults and delays; nothing is applied unless the whole body is valid."""
        req: Any = decoding.load(body) if body.strip() else {}
        if not isinstance(req, dict):
            raise OllamaError(400, "faults must be a JSON object")
        faults, state = copy.copy(self.state.faults), self.state
        delays = {"token_delay_ms": state.token_delay_ms,
                  "first_token_delay_ms": state.first_token_delay_ms}  # fmt: skip
        try:
            for key in ("fail_next", "fail_status", "cut_after_chunks"):
                if key in req:
                    setattr(faults, key, None if req[key] is None else int(req[key]))
            if "fail_message" in req:
                faults.fail_message = str(req["fail_message"])
            if "stall_ms" in req:
                faults.stall_ms = float(req["stall_ms"] or 0)
            for key in delays:
                if key in req:
                    delays[key] = float(req[key])
        except (TypeError, ValueError) as exc:
            raise OllamaError(400, f"invalid fault value: {exc}") from None
        state.faults = faults
        state.token_delay_ms = delays["token_delay_ms"]
        state.first_token_delay_ms = delays["first_token_delay_ms"]
        await self.get_state(scope, b"", send)

    async def reset(self, scope: Scope, body: bytes, send: Send) -> None:
        self.state.reset()
        await self.get_state(scope, b"", send)

    async def get_state(self, scope: Scope, body: bytes, send: Send) -> None:
        await send_json(
            send,
            {
                "models": [m.display for m in self.state.installed.values()],
                "loaded": [e.installed.display for e in self.state.running()],
                "requests": self.state.requests,
                "faults": self.state.faults.as_dict(),
                "token_delay_ms": self.state.token_delay_ms,
                "first_token_delay_ms": self.state.first_token_delay_ms,
            },
        )


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
