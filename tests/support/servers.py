"""Start real servers (the emulator, the gateway) as subprocesses on loopback."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# A loaded 2-core CI machine has taken over 20 s to start a server; the deadline only
# bounds a failure, so it is generous.
START_DEADLINE_S = 60.0


def wait_until_up(
    url: str, proc: subprocess.Popen[bytes], deadline_s: float = START_DEADLINE_S
) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise RuntimeError(f"server exited with {proc.returncode}:\n{out}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=0.5).status_code < 500:
                return
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"server at {url} did not come up within {deadline_s}s")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def running_process(
    args: Sequence[str],
    probe_url: str,
    env: dict[str, str] | None = None,
    deadline_s: float = START_DEADLINE_S,
) -> Iterator[subprocess.Popen[bytes]]:
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.Popen(
        list(args), cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_until_up(probe_url, proc, deadline_s)
        yield proc
    finally:
        stop_process(proc)
        if proc.stdout:
            proc.stdout.close()


@contextlib.contextmanager
def running_emulator(
    models: Sequence[str] = ("llama3.1:8b",),
    token_delay_ms: float = 0,
    first_token_delay_ms: float = 0,
    extra_args: Sequence[str] = (),
) -> Iterator[str]:
    """Start `ollama-gateway emulator` on a free port; yields its base URL."""
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "app.cli",
        "emulator",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--models",
        ",".join(models),
        "--token-delay-ms",
        str(token_delay_ms),
        "--first-token-delay-ms",
        str(first_token_delay_ms),
        *extra_args,
    ]
    url = f"http://127.0.0.1:{port}"
    with running_process(args, url + "/"):
        yield url


@contextlib.contextmanager
def serving_in_thread(app: Any) -> Iterator[str]:
    """Run an ASGI app under a real uvicorn server in a background thread; yields its URL.

    Cheaper than a subprocess per test, and still real HTTP on loopback: requests go
    through uvicorn's protocol handling, the app's lifespan runs as in production.
    """
    import threading

    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_DEADLINE_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start under uvicorn")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


async def answer_lifespan(receive: Any, send: Any) -> None:
    """The lifespan protocol for a tiny test ASGI app that has nothing to start or stop."""
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})
