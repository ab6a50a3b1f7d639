"""The audit log's writer: entries queue in memory and are stored in batches.

A request only appends its entry to a queue (no database round trip on its path); a
background task stores what has queued every `interval` seconds, or at once when
`batch_size` entries are waiting. `flush()` stores everything queued so far (the audit
endpoint calls it, so a reader sees every request answered before its own); `aclose()`
flushes and stops. Entries that fail to store are logged and kept for the next round,
never raised to a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

from app.ollama.outputs import OutputManager

__all__ = ["AuditWriter"]

logger = logging.getLogger(__name__)


class AuditWriter:
    def __init__(
        self,
        outputs: OutputManager,
        *,
        interval: float = 0.5,
        batch_size: int = 200,
        max_pending: int = 100_000,
    ) -> None:
        self.outputs = outputs
        self.max_pending = max_pending
        self.interval = interval
        self.batch_size = batch_size
        self._pending: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="audit-writer")

    def record(self, **entry: Any) -> None:
        """Queue one entry (the `OutputManager.arecord_audit` fields).

        At most `max_pending` wait (the database may be down): beyond that the oldest are
        dropped, and the drop is logged.
        """
        entry.setdefault("created_at", datetime.now(UTC))
        if len(self._pending) >= self.max_pending:
            dropped = len(self._pending) - self.max_pending + 1
            del self._pending[:dropped]
            logger.error("audit log backlog full: %d oldest entries dropped", dropped)
        self._pending.append(entry)
        if len(self._pending) >= self.batch_size:
            self._wake.set()

    async def flush(self) -> None:
        async with self._lock:
            batch, self._pending = self._pending, []
            if not batch:
                return
            try:
                await self.outputs.arecord_audit_many(batch)
            except Exception:
                # kept for the next round (the backlog is bounded by `max_pending`)
                logger.exception("storing %d audit entries failed; will retry", len(batch))
                self._pending[:0] = batch

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
