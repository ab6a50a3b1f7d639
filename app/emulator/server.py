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
import contextlib
import copy
from collections.abc import Awaitable, Callable
from typing import Any

from app.emulator import decoding
from app.emulator.config import EmulatorConfig
from app.emulator.engine import Engine
from app.emulator.errors import CutConnection, OllamaError
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
from app.emulator.state import FAULT_TYPES, Faults, State

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
            if faults.drop_connection > 0:
                faults.drop_connection -= 1
                await drop_connection(send, receive)
                return
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


DELAYS = ("token_delay_ms", "first_token_delay_ms")


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
