"""`LoopThread`: run async code from synchronous code, in one shared piece of plumbing.

The seed's sync methods (`run_model`, `list_models`, ...) must work from a plain script and
from inside a running event loop (a notebook) without deadlock. `asyncio.run` fails in the
second case, so each owner (the core's manager, each database user) keeps one private
event loop in a daemon thread and hands it coroutines. Objects bound to a loop (httpx
clients, database engines) that the sync path uses are created on that loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """A private event loop running in a daemon thread, started on first use."""

    def __init__(self, name: str = "ollama-gateway-sync") -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def started(self) -> bool:
        """True once the loop runs (so closing it has something to do)."""
        return self._loop is not None and not self._loop.is_closed()

    def in_loop_thread(self) -> bool:
        """True when called from the loop's own thread (where blocking on it deadlocks)."""
        return self._thread is not None and threading.current_thread() is self._thread

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def _run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                thread = threading.Thread(target=_run, name=self._name, daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule `coro` on the private loop; returns a `concurrent.futures.Future`."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the private loop and block until it returns."""
        if self._thread is not None and threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("LoopThread.run called from its own loop: use the async method")
        return self.submit(coro).result()

    def close(self) -> None:
        """Stop the loop and join its thread; safe to call twice."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()
