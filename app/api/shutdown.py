"""Zero-downtime restarts: what a process does between SIGTERM and its exit.

1. At once: `draining` is set, so `/readyz` answers 503 and a load balancer stops sending
   new requests here; requests that still arrive are served.
2. After `GATEWAY_SHUTDOWN_DRAIN` seconds: the server stops listening (uvicorn's own exit),
   and waits for the requests and streams in flight.
3. At `GATEWAY_SHUTDOWN_GRACE` seconds after SIGTERM: `ending` is set; streams still
   running stop their run (stored `cancelled` with its partial text) and end with an error
   event with code `shutting_down`. uvicorn's own graceful timeout, a few seconds later, is
   only the backstop.

SIGINT (Ctrl-C at a terminal) skips the drain. The handler is installed by the lifespan
only in the main thread (a test running the app in a thread keeps uvicorn's).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from types import FrameType
from typing import Any, TypeVar

__all__ = ["SHUTTING_DOWN", "Shutdown", "ShuttingDown", "until_shutdown"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Handler = Callable[[int, FrameType | None], Any] | int | None


SHUTTING_DOWN = "the gateway is shutting down; the run was stopped and stored as cancelled"


class ShuttingDown(Exception):
    """Raised into a stream whose grace ran out."""


class Shutdown:
    def __init__(self, drain_seconds: float, grace_seconds: float) -> None:
        self.drain_seconds = drain_seconds
        self.grace_seconds = grace_seconds
        self.draining = False
        self.ending = asyncio.Event()
        self._previous: Handler = None

    def install(self) -> None:
        """Take SIGTERM and SIGINT over from uvicorn, handing them back after the drain."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._previous = signal.getsignal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            # In an empty context: the handler runs in whatever context the main thread is
            # in when the signal lands (a request's, its request id and trace with it).
            signal.signal(
                sig,
                lambda s, f: loop.call_soon_threadsafe(
                    self.begin, s, f, context=contextvars.Context()
                ),
            )

    def begin(self, sig: int, frame: FrameType | None = None) -> None:
        """SIGTERM (or SIGINT) arrived: drain, then stop listening, then end what is left."""
        if self.draining:
            self._hand_over(sig, frame)  # a second signal: no more waiting
            return
        self.draining = True
        loop = asyncio.get_running_loop()
        drain = self.drain_seconds if sig == signal.SIGTERM else 0.0
        logger.info(
            "shutting down: not ready now, listening for %.1f s more, in-flight work has "
            "%.1f s to finish",
            drain,
            self.grace_seconds,
        )
        loop.call_later(drain, self._hand_over, sig, frame)
        loop.call_later(self.grace_seconds, self.ending.set)

    def _hand_over(self, sig: int, frame: FrameType | None) -> None:
        previous = self._previous
        if callable(previous):
            previous(sig, frame)
        elif previous == signal.SIG_DFL:
            signal.raise_signal(sig)


async def until_shutdown(items: AsyncIterator[T], ending: asyncio.Event) -> AsyncIterator[T]:
    """`items`, until `ending` is set: then `ShuttingDown` is raised in the consumer.

    One watcher per stream, not a task per item: when `ending` is set while the consumer
    waits for the next item, that wait is cancelled (so `items` is never left running: its
    own cleanup, a run stored as cancelled, happens, and its owner may close it) and
    `ShuttingDown` raised instead of the cancellation; set while the consumer is busy with
    an item, the next step raises it.
    """
    waiting: asyncio.Task[Any] | None = None
    stopped = False

    def stop(_: object) -> None:
        nonlocal stopped
        if waiting is not None and not waiting.done():
            stopped = True
            waiting.cancel()

    watch = asyncio.ensure_future(ending.wait())
    watch.add_done_callback(stop)
    try:
        while True:
            if ending.is_set():
                raise ShuttingDown
            waiting = asyncio.current_task()  # the consumer may change between steps
            try:
                item = await anext(items)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if stopped and waiting is not None and waiting.uncancel() == 0:
                    raise ShuttingDown from None  # our cancellation, not the consumer's
                raise
            finally:
                waiting = None
            yield item
    finally:
        watch.remove_done_callback(stop)
        watch.cancel()
