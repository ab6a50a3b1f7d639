"""`DatabaseUser`: what the core's `OutputManager` and `ConfigManager` and the access layer's
`KeyStore` share: a database, checked once, usable from sync code (through a private loop
thread) and from async code (on the caller's loop)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from app.loop_thread import LoopThread
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
        self._writes: set[asyncio.Task[Any]] = set()
        self._writes_lock = threading.Lock()

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

    async def _shielded(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a write to its end even when the caller is cancelled.

        Callers store results from `finally` blocks and cancellation paths (a client that
        disconnected mid-stream); there a cancellation, or an anyio cancel scope that cancels
        every await, would otherwise abandon the write. The caller still sees its
        `CancelledError`; the write finishes in its own task, and `aclose` waits for it.
        """
        task = asyncio.ensure_future(coro)
        with self._writes_lock:
            self._writes.add(task)

        def forget(done: asyncio.Task[Any]) -> None:
            with self._writes_lock:
                self._writes.discard(done)

        task.add_done_callback(forget)
        return await asyncio.shield(task)

    async def _drain(self) -> None:
        """Wait for this loop's writes still running (their callers were cancelled)."""
        loop = asyncio.get_running_loop()
        with self._writes_lock:
            pending = [t for t in self._writes if t.get_loop() is loop]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def close(self) -> None:
        """Finish pending writes, dispose the engines and stop the private loop (sync code)."""
        if self._loop_thread.started:
            self._run(self._drain())
            self._run(self.db.dispose())
        self._loop_thread.close()

    async def aclose(self) -> None:
        """Finish pending writes and dispose the engines of the private and calling loops."""
        await self._drain()
        if self._loop_thread.started and not self._loop_thread.in_loop_thread():
            await asyncio.wrap_future(self._loop_thread.submit(self._drain()))
            await asyncio.wrap_future(self._loop_thread.submit(self.db.dispose()))
        await self.db.dispose()
        await asyncio.to_thread(self._loop_thread.close)
