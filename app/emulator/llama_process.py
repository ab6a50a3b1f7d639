"""A llama.cpp runner process as its parent sees it (Ollama's runner, in Python).

`RunnerProcess` starts `python -m app.emulator.llama_runner` with one end of a socket
pair, waits for its `ready` line and talks to it in JSON lines: requests go down
(`{"op": "generate"|"embed"|"cancel", "id": N, ...}`), replies come up (`piece`s, then
`done`; `vectors`; or `error`), each tagged with its request's id. A thread reaps the
process as soon as it ends and keeps how it ended in the words Go's `os/exec` uses, as
Ollama reports a runner that died: `signal: segmentation fault (core dumped)`,
`exit status 1` (`TERMINATED` + that is Ollama's error text).

The socket is blocking until `ready` (read in the thread that starts the runner); the
engine then makes it non-blocking and reads it on its event loop (`receive`, `send`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

__all__ = [
    "RUNNER_MODULE",
    "TERMINATED",
    "RunnerFailed",
    "RunnerProcess",
    "describe_exit",
    "encode",
]

RUNNER_MODULE = "app.emulator.llama_runner"
TERMINATED = "llama runner process has terminated"
"""Ollama's words for a runner that died; the exit (`describe_exit`) follows a colon."""

# Go's names for the signals (syscall.Signal.String()): what Ollama's message shows.
_SIGNAL_NAMES: dict[int, str] = {
    signal.SIGABRT: "aborted",
    signal.SIGBUS: "bus error",
    signal.SIGFPE: "floating point exception",
    signal.SIGHUP: "hangup",
    signal.SIGILL: "illegal instruction",
    signal.SIGINT: "interrupt",
    signal.SIGKILL: "killed",
    signal.SIGPIPE: "broken pipe",
    signal.SIGQUIT: "quit",
    signal.SIGSEGV: "segmentation fault",
    signal.SIGSYS: "bad system call",
    signal.SIGTERM: "terminated",
    signal.SIGTRAP: "trace/breakpoint trap",
    signal.SIGXCPU: "CPU time limit exceeded",
}


class RunnerFailed(Exception):
    """The runner died or did not start; the message says how (Ollama's words)."""


def describe_exit(code: int, status: int) -> str:
    """How a process ended, as Go's `ProcessState.String()` says it: `code` is waitid's
    `si_code` (`CLD_EXITED`, `CLD_KILLED`, `CLD_DUMPED`), `status` its `si_status`."""
    if code == os.CLD_EXITED:
        return f"exit status {status}"
    text = f"signal: {_SIGNAL_NAMES.get(status, f'signal {status}')}"
    return text + " (core dumped)" if code == os.CLD_DUMPED else text


def encode(message: dict[str, Any]) -> bytes:
    """One JSON line (ASCII: any text, lone surrogates included, goes through)."""
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


class RunnerProcess:
    """One runner process: its pid, its end of the socket, and how it ended."""

    def __init__(self, gguf: Path, *, stderr: IO[bytes] | None = None) -> None:
        ours, theirs = socket.socketpair()
        args = [sys.executable, "-m", RUNNER_MODULE, "--gguf", str(gguf),
                "--fd", str(theirs.fileno())]  # fmt: skip
        try:
            self._proc = subprocess.Popen(
                args, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stderr=stderr
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self.pid = self._proc.pid
        self.started = time.monotonic()
        self.exit: str | None = None
        """How it ended (`describe_exit`), once it has."""
        self.exited = threading.Event()
        self._buffer = bytearray()
        self._scanned = 0
        threading.Thread(target=self._reap, name=f"llama-runner-{self.pid}", daemon=True).start()

    def _reap(self) -> None:
        """Wait for the end (waitid: the core-dump flag too), keep it, let waiters know."""
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED)
        except ChildProcessError:
            self.exit = "exit status unknown"
        else:
            assert info is not None
            self.exit = describe_exit(info.si_code, info.si_status)
            code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
            self._proc.returncode = code  # reaped here: Popen must not wait for it again
        self.exited.set()

    @property
    def alive(self) -> bool:
        return not self.exited.is_set()

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        """Block until the runner says `ready` (its model loaded): that message.

        RunnerFailed when it dies first (how, in Ollama's words) or takes over `timeout`
        seconds (it is killed then)."""
        deadline = time.monotonic() + timeout
        while True:
            message = self._next_buffered()
            if message is not None:
                if not message.get("ready"):
                    raise RunnerFailed(f"the llama runner said {message!r} before ready")
                return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise RunnerFailed(
                    f"the llama runner did not load its model within {timeout:.0f} s"
                )
            self._read_blocking(min(remaining, 1.0))

    def termination(self, wait: float = 10.0) -> str:
        """Ollama's error for this runner's end (`TERMINATED: signal: ...`), waiting up to
        `wait` seconds for it to be reaped (its socket closes as it dies)."""
        self.exited.wait(wait)
        return f"{TERMINATED}: {self.exit or 'it closed its connection'}"

    def kill(self) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def close(self) -> None:
        """Close our end: the runner exits when it reads the end of its socket."""
        self.sock.close()

    # -- on an event loop, once ready (the socket non-blocking) ------------------------

    async def send(self, message: dict[str, Any]) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, encode(message))

    def send_nowait(self, message: dict[str, Any]) -> None:
        """A small message sent now if the socket takes it (a cancel); lost if the runner
        is gone."""
        with contextlib.suppress(OSError):
            self.sock.send(encode(message))

    async def receive(self) -> dict[str, Any] | None:
        """The next message, or None at the end of the socket (the runner is gone)."""
        loop = asyncio.get_running_loop()
        while True:
            message = self._next_buffered()
            if message is not None:
                return message
            try:
                chunk = await loop.sock_recv(self.sock, 1 << 16)
            except (OSError, ValueError):  # ValueError: closed by the supervisor
                return None
            if not chunk:
                return None
            self._buffer += chunk

    # -- blocking, for a check that owns the runner -----------------------------------

    def request(self, message: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
        """Send one request and read its replies up to the last (`done`, `vectors` or
        `error`). RunnerFailed when the runner dies or `timeout` passes (it is killed)."""
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(encode(message))
        except OSError:
            raise RunnerFailed(self.termination()) from None
        replies: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            reply = self._next_buffered()
            if reply is not None:
                replies.append(reply)
                if "piece" not in reply:
                    return replies
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise RunnerFailed(f"the llama runner did not answer within {timeout:.0f} s")
            self._read_blocking(remaining)

    def _read_blocking(self, timeout: float) -> None:
        """Add what the socket has within `timeout` seconds to the buffer (nothing when it
        has nothing yet). RunnerFailed when the runner closed it (it died)."""
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(1 << 16)
        except TimeoutError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            raise RunnerFailed(self.termination())
        self._buffer += chunk

    def _next_buffered(self) -> dict[str, Any] | None:
        end = self._buffer.find(b"\n", self._scanned)
        if end < 0:
            self._scanned = len(self._buffer)
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        self._scanned = 0
        message: dict[str, Any] = json.loads(line)
        return message
