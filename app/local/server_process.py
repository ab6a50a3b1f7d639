"""Starting and stopping a local `ollama serve` for `auto_start_server`.

A plain `subprocess.Popen` rather than an asyncio subprocess: the process outlives any
single event loop (it is started from whichever loop first needs the server and stopped
by the sync `cleanup()`), and asyncio subprocess transports are bound to one loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import IO
from urllib.parse import urlsplit

__all__ = ["ServerProcess", "host_port_of", "is_local_url"]

logger = logging.getLogger(__name__)


def host_port_of(base_url: str) -> str:
    """`http://127.0.0.1:11434` -> `127.0.0.1:11434`, the form `OLLAMA_HOST` takes."""
    parts = urlsplit(base_url if "://" in base_url else f"http://{base_url}")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"


def is_local_url(base_url: str) -> bool:
    """True when `base_url` points at this machine, the only place we may start a server."""
    host = urlsplit(base_url if "://" in base_url else f"http://{base_url}").hostname or ""
    if host in ("localhost", "") or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


class ServerProcess:
    """One `ollama serve` this process started, with its output kept for error messages."""

    def __init__(self, binary: str, base_url: str) -> None:
        self.binary = binary
        self.base_url = base_url
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Spawn `<binary> serve` bound to `base_url`'s host:port (raises OSError if absent)."""
        env = {**os.environ, "OLLAMA_HOST": host_port_of(self.base_url)}
        # A file, not a pipe: nobody reads the server's log while it runs, and a full
        # pipe would block it.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        try:
            self._proc = subprocess.Popen(
                [self.binary, "serve"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
        except OSError:
            self._log.close()
            self._log = None
            raise
        logger.info(
            "started %s serve (pid %s) on %s", self.binary, self._proc.pid, env["OLLAMA_HOST"]
        )

    def output_tail(self, limit: int = 2000) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0, os.SEEK_END)
        size = self._log.tell()
        self._log.seek(max(0, size - limit))
        return self._log.read().decode(errors="replace").strip()

    async def wait_ready(self, probe: Callable[[], Awaitable[bool]], deadline_s: float) -> bool:
        """Poll `probe` until it answers True, the process dies, or the deadline passes."""
        end = time.monotonic() + deadline_s
        delay = 0.02
        while time.monotonic() < end:
            if await probe():
                return True
            if not self.running:
                return False
            # Polling is the only signal a foreign server gives that it is listening.
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)
        return False

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (kill it if it does not exit in `timeout`); safe to repeat."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            logger.info("stopped %s serve (pid %s)", self.binary, proc.pid)
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None
