"""The local model: the emulator with its llama.cpp engine, run as a child process on a free
loopback port, as `ollama-gateway serve --local-model` uses it (its only backend).

Before it starts, `check_local_model` has llama.cpp write one token in a child process
(`ollama-gateway local-model check`): a build that crashes on this CPU is a one-line
error saying what to do, not a gateway that answers 503. While it runs, the emulator
keeps llama.cpp in a runner process it restarts after a crash; `local_model_health` asks
it about that runner, for `/readyz`.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

__all__ = ["LocalModelError", "check_local_model", "local_model_backend", "local_model_health"]

START_TIMEOUT_S = 120


class LocalModelError(Exception):
    """The local model could not be started; the message says why."""


def check_local_model(gguf: str | None) -> str:
    """One token at the engine's default context, written by llama.cpp in a child process:
    what it took, or LocalModelError with the one line that says what to do."""
    from app.emulator.llama_check import check_llama

    result = check_llama(Path(gguf) if gguf else None)
    if not result.ok:
        raise LocalModelError(result.line)
    return result.line


async def local_model_health(url: str, backends: list[dict[str, Any]], wait_s: float) -> bool:
    """Whether the local model's llama.cpp runner is up, as its emulator says
    (`GET /_emulator/engine`). Its state goes on the local backend's entry of `backends`
    (`engine`); while it is down, that entry is not healthy and its `error` says why."""
    try:
        async with httpx.AsyncClient(timeout=wait_s) as client:
            reply = await client.get(f"{url}/_emulator/engine")
        engine: dict[str, Any] = reply.json()
    except (httpx.HTTPError, ValueError) as exc:
        engine = {"state": "unreachable", "error": f"{type(exc).__name__}: {exc}"}
    up = engine.get("state") == "running"
    for backend in backends:
        if backend.get("url") == url:
            backend["engine"] = engine
            if not up:
                backend["healthy"] = False
                cause = engine.get("last_exit") or engine.get("error") or "unknown"
                backend["error"] = f"the local model is {engine.get('state')} ({cause})"
    return up


def _end_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def local_model_backend(gguf: str | None) -> Iterator[str]:
    """The engine-backed emulator as a child process on a free loopback port: its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = [sys.executable, "-m", "app.cli", "emulator", "--engine", "llama-cpp",
            "--port", str(port)]  # fmt: skip
    if gguf:
        args += ["--gguf", gguf]
    # uvicorn re-raises the signal that stopped it, so a `finally` may never run: the
    # child is also told to end when this process does (Linux's parent-death signal).
    child = subprocess.Popen(args, preexec_fn=_end_with_parent)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if child.poll() is not None:
                raise LocalModelError("the local model did not start (see above)")
            try:
                with urllib.request.urlopen(url + "/api/version", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise LocalModelError(
                        f"the local model did not start within {START_TIMEOUT_S} s"
                    ) from None
                time.sleep(0.2)
        yield url
    finally:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
