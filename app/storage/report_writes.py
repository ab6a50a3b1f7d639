"""A report (batch, benchmark, comparison) and its runs, written in one transaction."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from app.storage.db import Database
from app.storage.escaping import escape_row
from app.storage.outage import is_outage
from app.storage.repositories import Executions, Reports
from app.storage.spool import RowSpool
from app.storage.tables import Execution, ReportRow

__all__ = ["write_report"]

logger = logging.getLogger(__name__)


async def write_report(
    db: Database, report: ReportRow, runs: Sequence[Execution], spool: RowSpool | None = None
) -> tuple[list[str], int]:
    """Store `report` and `runs` (all of it or nothing); the runs' ids and how many rows
    had to be stored with their text escaped (the database refused them as they were).

    With a `spool`, a database that does not answer gets them later: they go to the spool
    as one entry (`SpoolFull` when it is full).
    """

    async def store() -> list[str]:
        async with db.session() as session:
            await Reports(session).add(report)
            return await Executions(session).add_all(runs)

    try:
        return await store(), 0
    except Exception as exc:
        if spool is not None and is_outage(exc):
            await spool.aappend([[report, *runs]])
            logger.warning("the database does not answer: report %s spooled", report.id)
            return [run.id for run in runs], 0
        escaped = [escape_row(row) for row in (report, *runs)]
        if not any(escaped):
            raise
    ids = await store()
    logger.warning("report %s stored with its text escaped", report.id)
    return ids, sum(escaped)
