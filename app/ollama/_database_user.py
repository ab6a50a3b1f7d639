"""What OutputManager and ConfigManager share: a database, checked once, usable from sync
code (through a private loop thread) and from async code (on the caller's loop)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from app.ollama._sync import LoopThread
from app.storage.db import Database
from app.storage.migrations import ensure_schema

T = TypeVar("T")


class DatabaseUser:
    """Owns a `Database`; the schema is ensured (a new database created) on first use."""

    def __init__(self, database_url: str, *, name: str, ensure: bool = True) -> None:
        self.database_url = database_url
        self.db = Database(database_url)
        self._ensure = ensure
        self._ready = False
        self._ready_lock = threading.Lock()
        self._loop_thread = LoopThread(name=name)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine of this object's async API from sync code."""
        return self._loop_thread.run(coro)

    async def _prepare(self) -> None:
        if self._ready or not self._ensure:
            return

        def check() -> None:
            with self._ready_lock:
                if not self._ready:
                    ensure_schema(self.database_url)
                    self._ready = True

        await asyncio.to_thread(check)

    def close(self) -> None:
        """Dispose the engines and stop the private loop (sync code)."""
        if self._loop_thread.started:
            self._run(self.db.dispose())
        self._loop_thread.close()

    async def aclose(self) -> None:
        """Dispose the engines of the private loop and of the calling loop."""
        if self._loop_thread.started and not self._loop_thread.in_loop_thread():
            await asyncio.wrap_future(self._loop_thread.submit(self.db.dispose()))
        await self.db.dispose()
        await asyncio.to_thread(self._loop_thread.close)
