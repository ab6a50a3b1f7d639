"""The audit log's writer: entries queue in memory and are stored in batches.

A request only appends its entry to a queue (no database round trip on its path); a
background task stores what has queued every `interval` seconds, or at once when
`batch_size` entries are waiting. `flush()` stores everything queued so far (the audit
endpoint calls it, so a reader sees every request answered before its own); `aclose()`
flushes and stops.

One bad entry never holds back the others: a batch the database refuses is retried
entry by entry, and an entry refused on its own is stored with its text escaped (and
flagged `text_escaped`, counted in `escaped`). Only when the database itself fails (it
does not answer, or an entry with nothing to escape is refused too) are the entries kept
for the next round, in a bounded backlog in memory, never raised to a request; an outage
is logged once, not every round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

from app.access.audit_store import AuditStore
from app.storage.outage import is_outage

__all__ = ["AuditWriter"]

logger = logging.getLogger(__name__)


class AuditWriter:
    def __init__(
        self,
        store: AuditStore,
        *,
        interval: float = 0.5,
        batch_size: int = 200,
        max_pending: int = 100_000,
    ) -> None:
        self.store = store
        self.max_pending = max_pending
        self.interval = interval
        self.batch_size = batch_size
        self._pending: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.escaped = 0
        """Entries stored only after their text was escaped."""
        self._outage = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="audit-writer")

    def record(self, **entry: Any) -> None:
        """Queue one entry (the `AuditStore` fields).

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
                await self.store.arecord_many(batch)
                if self._outage:
                    logger.info("the database answers again: audit entries are stored")
                self._outage = False
                return
            except Exception as exc:
                if is_outage(exc):
                    if not self._outage:
                        logger.warning(
                            "the database does not answer: audit entries are kept in memory "
                            "(at most %d) until it does: %r",
                            self.max_pending,
                            exc,
                        )
                    self._outage = True
                    self._pending[:0] = batch
                    return
                logger.warning(
                    "storing %d audit entries failed; storing them one by one", len(batch)
                )
            kept = await self._store_one_by_one(batch)
            if kept:
                # the database failed: kept for the next round (bounded by `max_pending`)
                self._pending[:0] = kept

    async def _store_one_by_one(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Store each entry alone, escaped when refused; the entries left when the database
        itself fails."""
        for index, entry in enumerate(batch):
            try:
                await self.store.arecord_many([entry])
                continue
            except Exception:
                pass
            try:
                stored = await self.store.arecord_escaped(entry)
            except Exception:
                stored = None
            if stored is None:
                logger.error("storing audit entries failed; %d kept for later", len(batch) - index)
                return batch[index:]
            self.escaped += 1
            logger.warning("audit entry %s stored with its text escaped", stored)
        return []

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
        await self.store.aclose()
