"""Group commit: runs stored at the same time share one transaction.

Each caller still waits until its own row is committed (a result id is never handed out
for a row that could be lost), but while one transaction is in flight the rows that
arrive queue up and go in the next one together. Under concurrency that replaces one
transaction (and one commit, one connection checkout) per run by one per batch; alone, a
row is written at once, as before. When a batch fails, its rows are retried one by one,
so one bad row fails only its own caller; a row that fails on its own is tried once more
with its text escaped (`app.storage.escaping`), so a run whose text the database cannot
hold as it is (NUL on PostgreSQL) is still stored, flagged `text_escaped` and counted in
`escaped`.

With a `spool`, rows the database cannot take because it does not answer (an outage, see
`app.storage.outage`) go to the spool instead, and their callers get their ids as if
they had been committed (the spool is durable and is written to the database when it
answers again); only a full spool fails them (`SpoolFull`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

from app.observability import telemetry
from app.storage.escaping import escape_row
from app.storage.outage import DatabaseUnavailable, is_outage
from app.storage.spool import RowSpool
from app.storage.tables import Base

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

__all__ = ["GroupCommit", "loop_group_commit"]


RowT = TypeVar("RowT", bound=Base)


class GroupCommit(Generic[RowT]):
    """One per event loop (futures belong to their loop), for rows of one table with an `id`
    (runs, stored responses)."""

    def __init__(
        self,
        write: Callable[[Sequence[RowT]], Awaitable[None]],
        spool: RowSpool | None = None,
        max_batch: int = 500,
    ) -> None:
        self._write = write
        self.spool = spool
        self.max_batch = max_batch
        self._pending: list[tuple[RowT, asyncio.Future[str]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._links: dict[asyncio.Future[str], SpanContext] = {}
        """Tracing on: the span each pending row was stored from (the commit links them)."""
        self.escaped = 0
        """Rows stored only after their text was escaped."""

    async def add(self, row: RowT) -> str:
        """Store `row`; returns its id once its transaction has committed."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending.append((row, future))
        if telemetry.enabled():
            link = telemetry.current_span_context()
            if link is not None:
                self._links[future] = link
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._pending:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            if self._links:
                # One span for the batch's transaction, in a trace of its own, linked to
                # the span of each run it stores (the statements are its children).
                links = [self._links.pop(f) for _, f in batch if f in self._links]
                commit = telemetry.start_span(
                    "gateway.storage.commit",
                    {"gateway.storage.rows": len(batch)},
                    links=links,
                    root=True,
                )
                with telemetry.ending(commit), telemetry.use_span(commit):
                    await self._write_batch(batch)
            else:
                await self._write_batch(batch)

    async def _write_batch(self, batch: Sequence[tuple[RowT, asyncio.Future[str]]]) -> None:
        """Store one batch (see the module doc): together, else each on its own."""
        if batch:
            try:
                await self._write([row for row, _ in batch])
            except Exception as exc:
                if self.spool is not None and is_outage(exc):
                    await self._to_spool(batch)
                    return
                if len(batch) == 1:
                    await self._write_alone(batch[0][0], batch[0][1], first_error=exc)
                    return
                for row, future in batch:  # find the bad row: each on its own
                    await self._write_alone(row, future)
            else:
                for row, future in batch:
                    _settle(future, value=_id(row))

    async def _to_spool(self, batch: Sequence[tuple[RowT, asyncio.Future[str]]]) -> None:
        """Spool the rows (one entry each); their callers get their ids, or `SpoolFull`."""
        assert self.spool is not None
        try:
            await self.spool.aappend([[row] for row, _ in batch])
        except DatabaseUnavailable as exc:
            for _, future in batch:
                _settle(future, error=exc)
            return
        for row, future in batch:
            _settle(future, value=_id(row))

    async def _write_alone(
        self, row: RowT, future: asyncio.Future[str], first_error: Exception | None = None
    ) -> None:
        """Store one row of a failed batch: as it is (unless it already failed alone, with
        `first_error`), then escaped."""
        error = first_error
        if error is None:
            try:
                await self._write([row])
            except Exception as exc:
                error = exc
            else:
                _settle(future, value=_id(row))
                return
        if self.spool is not None and error is not None and is_outage(error):
            await self._to_spool([(row, future)])
            return
        if not escape_row(row):  # nothing to escape: the failure was not the row's text
            _settle(future, error=error or RuntimeError("the row could not be stored"))
            return
        try:
            await self._write([row])
        except Exception as exc:
            _settle(future, error=exc)
        else:
            self.escaped += 1
            _settle(future, value=_id(row))


def loop_group_commit(
    committers: dict[asyncio.AbstractEventLoop, GroupCommit[RowT]],
    make: Callable[[], GroupCommit[RowT]],
) -> GroupCommit[RowT]:
    """The running loop's group commit in `committers` (made by `make` on first use there);
    those of closed loops are dropped."""
    loop = asyncio.get_running_loop()
    committer = committers.get(loop)
    if committer is None:
        for stale in [lp for lp in committers if lp.is_closed()]:
            del committers[stale]
        committer = committers[loop] = make()
    return committer


def _id(row: Base) -> str:
    return str(row.id)  # type: ignore[attr-defined]  # every table it writes has one


def _settle(
    future: asyncio.Future[str], value: str | None = None, error: BaseException | None = None
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value or "")
