"""A small TCP proxy for tests: put it between a client and a server, then slow or cut.

    with tcp_proxy("127.0.0.1", backend_port) as proxy:
        httpx.get(proxy.url + "/api/version")       # goes through
        proxy.delay(per_chunk_s=0.2)                # each chunk waits 200 ms, both ways
        proxy.throttle(50_000)                      # at most 50 kB/s each way
        proxy.cut()                                 # every open connection ends now
        proxy.cut(refuse_new=True)                  # ... and new ones are refused
        proxy.accept_new()                          # listen again (same port)

It runs its own asyncio loop in a background thread; the controls may be called from any
thread and apply at once, to open connections too. Everything stays on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TcpProxy", "tcp_proxy"]

READ_SIZE = 65536


@dataclass(eq=False)
class _Link:
    """One proxied connection: the client's side and the target's side."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()


class TcpProxy:
    """Forwards connections from `host:port` (a free loopback port) to the target."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = "127.0.0.1"
        self.port = 0
        self.connect_delay_s = 0.0
        self.chunk_delay_s = 0.0
        self.bytes_per_s: float | None = None
        self.accepted = 0
        """Connections accepted so far."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def open_connections(self) -> int:
        return len(self._links)

    # -- controls (any thread) ---------------------------------------------------------

    def delay(self, *, per_chunk_s: float = 0.0, on_connect_s: float = 0.0) -> None:
        """Wait `per_chunk_s` before forwarding each chunk (both ways) and `on_connect_s`
        before connecting a new client to the target. Zero turns a delay off."""
        self.chunk_delay_s = per_chunk_s
        self.connect_delay_s = on_connect_s

    def throttle(self, bytes_per_s: float | None) -> None:
        """Forward at most `bytes_per_s` each way, per connection (None: no limit)."""
        if bytes_per_s is not None and bytes_per_s <= 0:
            raise ValueError("bytes_per_s must be positive (or None for no limit)")
        self.bytes_per_s = bytes_per_s

    def cut(self, *, refuse_new: bool = False) -> None:
        """Abort every open connection now (both sides see a reset); with `refuse_new`,
        also stop listening, so new connections are refused until `accept_new`."""
        self._run(self._cut(refuse_new))

    def accept_new(self) -> None:
        """Listen again on the same port after `cut(refuse_new=True)`."""
        self._run(self._listen())

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self._run(self._listen())

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run(self._cut(True))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    # -- on the proxy's loop -----------------------------------------------------------

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _cut(self, refuse_new: bool) -> None:
        if refuse_new and self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for link in list(self._links):
            link.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(writer)
        self._links.add(link)
        try:
            if self.connect_delay_s > 0:
                await asyncio.sleep(self.connect_delay_s)
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                writer.transport.abort()
                return
            link.upstream = up_writer
            if writer.transport.is_closing():  # cut while connecting
                up_writer.transport.abort()
                return
            link.tasks = [
                asyncio.create_task(self._pump(reader, up_writer, link)),
                asyncio.create_task(self._pump(up_reader, writer, link)),
            ]
            await asyncio.gather(*link.tasks, return_exceptions=True)
        finally:
            self._links.discard(link)
            for side in (link.client, link.upstream):
                if side is not None:
                    side.close()

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: _Link
    ) -> None:
        """Copy one direction until end of stream (then half-close it) or an error (then
        abort the whole connection)."""
        try:
            while True:
                rate = self.bytes_per_s
                size = READ_SIZE if rate is None else max(1, min(READ_SIZE, int(rate / 20)))
                data = await src.read(size)
                if not data:
                    break
                if self.chunk_delay_s > 0:
                    await asyncio.sleep(self.chunk_delay_s)
                dst.write(data)
                await dst.drain()
                rate = self.bytes_per_s
                if rate is not None:
                    await asyncio.sleep(len(data) / rate)
            if dst.can_write_eof() and not dst.transport.is_closing():
                dst.write_eof()
        except (ConnectionError, OSError):
            link.abort()


@contextlib.contextmanager
def tcp_proxy(target_host: str, target_port: int) -> Iterator[TcpProxy]:
    """A running `TcpProxy` to the target on a free loopback port; stopped on exit."""
    proxy = TcpProxy(target_host, target_port)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
