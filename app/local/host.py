"""`LocalOllama`: the Ollama on this host, as the seed's `OllamaManager` reaches it.

Two of the seed's switches are about the machine the manager runs on rather than about a
fleet: `auto_start_server` (start `ollama serve` when the manager's own local URL is
silent: `ServerAutoStart`) and `use_http_api=False` (drive the `ollama` binary instead of
the HTTP API: `OllamaCli`). This object holds both, so the manager asks one thing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from app.local.autostart import ServerAutoStart
from app.local.cli_mode import OllamaCli

__all__ = ["LocalOllama"]


class LocalOllama:
    """`binary` and the server at `base_url` on this host.

    `may_start`: whether `ensure_server` may start `binary serve` (the seed's
    `auto_start_server`, for a manager that talks to its own `base_url` only); `cli`: run
    list, pull, rm and generate through the binary (the seed's `use_http_api=False`).
    `probe` answers whether the server responds.
    """

    def __init__(
        self,
        binary: str,
        base_url: str,
        *,
        probe: Callable[[], Awaitable[bool]],
        may_start: bool,
        cli: bool,
        start_timeout: float,
    ) -> None:
        self.binary = binary
        self.base_url = base_url
        self.may_start = may_start
        self.start_timeout = start_timeout
        self.cli = OllamaCli(binary, base_url) if cli else None
        """The binary for CLI mode, or None (the HTTP API)."""
        self._server = ServerAutoStart(probe)

    @property
    def started_server(self) -> bool:
        """True while an `ollama serve` started here is running."""
        return self._server.running

    async def ensure_server(self) -> None:
        """With `may_start`, start `binary serve` once if `base_url` is local and silent (see
        `ServerAutoStart.ensure`; after `stop()` the next call checks anew)."""
        if self.may_start:
            await self._server.ensure(self.binary, self.base_url, self.start_timeout)

    def stop(self) -> None:
        """Stop the server started here, if any."""
        self._server.stop()
