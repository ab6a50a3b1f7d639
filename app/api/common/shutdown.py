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
only under uvicorn and only in the main thread (a test running the app in a thread keeps
uvicorn's; granian's workers keep their own, see below).

The drain without the server's signal handling (`ollama-gateway drain`, Kubernetes'
`preStop`, compose's stop): the drain file (GATEWAY_DRAIN_FILE) appears, and every process
serving on that port, whichever server runs it, sees it within `DRAIN_POLL_SECONDS`: step 1
at once, and `ending` at the grace. While draining each process writes the number of its
requests and streams in flight to `<drain file>.<pid>`; `ollama-gateway drain` returns when
every one says 0 (or the grace ran out), and SIGTERM then finds nothing left to wait for:
under uvicorn the process stops listening at once (no second drain period); under granian
its own SIGTERM handling ends the workers. (granian's SIGTERM alone: `serve` drains through
the file first, see app/cli.py.)
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

__all__ = [
    "DRAIN_POLL_SECONDS",
    "SHUTTING_DOWN",
    "InFlight",
    "Shutdown",
    "ShuttingDown",
    "in_flight_reports",
    "until_shutdown",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Handler = Callable[[int, FrameType | None], Any] | int | None


SHUTTING_DOWN = "the gateway is shutting down; the run was stopped and stored as cancelled"


DRAIN_POLL_SECONDS = 0.2
"""How often a process looks for the drain file (and, draining, reports its in-flight count)."""


class ShuttingDown(Exception):
    """Raised into a stream whose grace ran out."""


class Shutdown:
    def __init__(self, drain_seconds: float, grace_seconds: float) -> None:
        self.drain_seconds = drain_seconds
        self.grace_seconds = grace_seconds
        self.draining = False
        self.ending = asyncio.Event()
        self.in_flight = 0
        """Requests (streams until their last byte) this process is serving (`InFlight`)."""
        self.drained_at: float | None = None
        """When the drain file was seen (monotonic), or None."""
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
        if self.draining and self.drained_at is None:
            self._hand_over(sig, frame)  # a second signal: no more waiting
            return
        loop = asyncio.get_running_loop()
        if self.drained_at is not None:
            # The drain file came first: the load balancer knows already, and the grace
            # started then. Stop listening now; what is in flight keeps the rest of the grace.
            self.drained_at = None  # a further signal is a second one
            loop.call_soon(self._hand_over, sig, frame)
            return
        self.draining = True
        drain = self.drain_seconds if sig == signal.SIGTERM else 0.0
        logger.info(
            "shutting down: not ready now, listening for %.1f s more, in-flight work has "
            "%.1f s to finish",
            drain,
            self.grace_seconds,
        )
        loop.call_later(drain, self._hand_over, sig, frame)
        loop.call_later(self.grace_seconds, self.ending.set)

    def drain(self) -> None:
        """The drain file appeared: not ready from now on, and `ending` at the grace."""
        if self.draining:
            return
        self.draining = True
        self.drained_at = time.monotonic()
        logger.info(
            "draining: not ready now, in-flight work has %.1f s to finish", self.grace_seconds
        )
        asyncio.get_running_loop().call_later(self.grace_seconds, self.ending.set)

    async def watch_drain_file(self, path: Path) -> None:
        """Drain when `path` exists; then report the in-flight count to `<path>.<pid>`."""
        report = path.with_name(f"{path.name}.{os.getpid()}")
        try:
            while True:  # a stat of a local file: no thread needed
                if os.path.exists(path):  # noqa: ASYNC240
                    break
                await asyncio.sleep(DRAIN_POLL_SECONDS)
            self.drain()
            while True:
                _write_atomically(report, str(self.in_flight))
                await asyncio.sleep(DRAIN_POLL_SECONDS / 2)
        finally:
            report.unlink(missing_ok=True)

    def _hand_over(self, sig: int, frame: FrameType | None) -> None:
        previous = self._previous
        if callable(previous):
            previous(sig, frame)
        elif previous == signal.SIG_DFL:
            signal.raise_signal(sig)


def _write_atomically(path: Path, text: str) -> None:
    part = path.with_name(path.name + ".part")
    part.write_text(text)
    part.replace(path)


def in_flight_reports(drain_file: Path) -> dict[int, int]:
    """What each draining process last wrote: pid -> requests in flight."""
    reports: dict[int, int] = {}
    for report in drain_file.parent.glob(f"{drain_file.name}.*"):
        pid = report.name.rsplit(".", 1)[1]
        if not pid.isdigit():
            continue
        try:
            reports[int(pid)] = int(report.read_text() or "0")
        except (OSError, ValueError):
            continue  # gone (the process stopped) or replaced just now
    return reports


PROBES = frozenset({"/healthz", "/readyz"})
"""Not counted: a load balancer's checks are no work to wait for."""


class InFlight:
    """Pure ASGI: counts the HTTP requests this process serves, a stream until its last
    byte, in its `Shutdown` (found through the app's services, as the metrics are)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in PROBES:
            await self.app(scope, receive, send)
            return
        services = getattr(getattr(scope.get("app"), "state", None), "services", None)
        shutdown = getattr(services, "shutdown", None)
        if not isinstance(shutdown, Shutdown):
            await self.app(scope, receive, send)
            return
        shutdown.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            shutdown.in_flight -= 1


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
