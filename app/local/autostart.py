"""`ServerAutoStart`: the manager's `auto_start_server`, starting `ollama serve` at most once.

A manager that talks to its own local `base_url` checks on first use that a server answers
there and, when none does, starts one (`ServerProcess`) and waits for it to answer. Only a
server started here is stopped again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable

from app.local.server_process import ServerProcess, is_local_url

__all__ = ["ServerAutoStart"]

logger = logging.getLogger(__name__)


class ServerAutoStart:
    """Checks a base URL once (from any loop or thread) and starts a server if it is silent.

    `probe` answers whether the server responds.
    """

    def __init__(self, probe: Callable[[], Awaitable[bool]]) -> None:
        self._probe = probe
        self._lock = threading.Lock()
        self._checked: concurrent.futures.Future[None] | None = None
        self._server: ServerProcess | None = None

    @property
    def running(self) -> bool:
        """True while a server started here is running."""
        return self._server is not None and self._server.running

    async def ensure(self, binary: str, base_url: str, start_timeout: float) -> None:
        """Start `binary serve` for `base_url` if it is local and silent (first call only).

        The first caller does the check; concurrent callers wait for its outcome. Failure
        to start is logged, not raised: the run that follows then fails with the backend's
        own "cannot connect" error.
        """
        with self._lock:
            checked = self._checked
            owner = checked is None
            if checked is None:
                checked = self._checked = concurrent.futures.Future()
        if not owner:
            await asyncio.wrap_future(checked)
            return
        try:
            await self._start_if_needed(binary, base_url, start_timeout)
        finally:
            checked.set_result(None)

    async def _start_if_needed(self, binary: str, base_url: str, start_timeout: float) -> None:
        if await self._probe():
            return
        if not is_local_url(base_url):
            logger.warning("%s does not answer and is not local: not starting a server", base_url)
            return
        server = ServerProcess(binary, base_url)
        try:
            server.start()
        except OSError as exc:
            logger.warning("cannot start %r serve: %s", binary, exc)
            return
        if await server.wait_ready(self._probe, start_timeout):
            self._server = server
            return
        logger.warning(
            "%s serve did not become ready within %ss:\n%s",
            binary,
            start_timeout,
            server.output_tail(),
        )
        await asyncio.to_thread(server.stop)

    def stop(self) -> None:
        """Stop the server started here (if any); the next `ensure` checks anew."""
        with self._lock:
            self._checked = None
        server, self._server = self._server, None
        if server is not None:
            server.stop()
