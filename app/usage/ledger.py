"""The usage ledger as the gateway reads it and adds the runs nobody stores to it: a room
of its own beside the core (stored runs are charged in the transaction that stores them,
by the storage layer's group commit, reports and spool: `app.storage.usage_ledger`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import datetime
from typing import Any

from app.ollama.types import ModelExecutionResult
from app.settings import Prices
from app.storage.database_user import DatabaseUser
from app.storage.usage_ledger import GroupBy, UsageTotals, charge_totals, usage_query
from app.usage.rows import Bucket, unstored_usage, usage_rows

__all__ = ["UsageLedger"]

logger = logging.getLogger(__name__)


class UsageLedger(DatabaseUser):
    """`GET /gateway/usage`'s rows, and the usage of runs nobody stores (embeddings, runs
    with `save_output=False`) kept in memory and added to the ledger every few seconds and
    at shutdown."""

    def __init__(self, database_url: str) -> None:
        super().__init__(database_url, name="usage-ledger")
        self._unstored = UsageTotals()
        """Usage of runs nobody stores, not yet added to the ledger (`aflush`)."""
        self._unstored_lock = threading.Lock()

    def charge_unstored(self, result: ModelExecutionResult) -> None:
        """Count a finished run nobody stores (the executor's unstored observer): added
        to the usage ledger by the next `aflush`."""
        with self._unstored_lock:
            unstored_usage(self._unstored, result)

    async def aflush(self) -> int:
        """Add the unstored runs' usage to the ledger (one transaction); how many ledger
        rows it touched. When the database does not answer it raises, and keeps them for
        the next call."""
        with self._unstored_lock:
            totals, self._unstored = self._unstored, UsageTotals()
        if not totals:
            return 0
        try:
            await self._prepare()
            async with self.db.engine().begin() as connection:
                await charge_totals(connection, totals)
        except BaseException:
            with self._unstored_lock:
                totals.merge(self._unstored)
                self._unstored = totals
            raise
        return len(totals.rows)

    async def aflush_forever(self, interval: float = 2.0) -> None:
        """`aflush` every `interval` seconds until cancelled (failures logged, the
        usage kept for the next round)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.aflush()
            except Exception as exc:
                logger.warning("the usage of unstored runs waits for the database: %r", exc)

    async def arows(
        self,
        *,
        group_by: GroupBy,
        bucket: Bucket,
        since: datetime,
        until: datetime,
        principal: str | None = None,
        prices: Prices | None = None,
    ) -> list[dict[str, Any]]:
        """The usage ledger's rows in [since, until), by `bucket` and `group_by` (a key's
        own with `principal`), each with a `cost` when `prices` are given."""
        await self._prepare()
        async with self.db.session() as session:
            result = await session.execute(usage_query(group_by, since, until, principal))
            sums = result.all()
        return usage_rows(sums, group_by, bucket, prices)
