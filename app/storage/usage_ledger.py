"""The usage ledger (`usage_ledger`): per key, team, model, backend, surface and hour, the
requests, failures, tokens and the backend's own seconds.

It is never written once per request. Runs are charged in the transaction that stores them
(`charge_runs`: the runs of that transaction summed by ledger row, then one upsert
statement adding the sums), whichever path stores them: the group commit, a report with
its runs, a job's run, the spool's replay (only the rows it really inserts, so a replayed
entry is charged once). Runs nobody stores are summed in memory (`UsageTotals`) and
added every few seconds and at shutdown (`charge_totals`).

An upsert adds to a row (`requests = requests + excluded.requests`), so any number of
replicas write the same rows without losing a count; each transaction writes its rows in
one order (sorted by key), so two transactions never wait for each other in a circle.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Select, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.storage.tables import Base, Execution, utc_now

__all__ = [
    "COUNTS",
    "GROUPS",
    "LedgerKey",
    "UsageTotals",
    "charge_runs",
    "charge_totals",
    "hour_of",
    "usage_query",
]

KEY_COLUMNS = ("bucket", "principal", "team", "model", "backend", "surface")
COUNTS = (
    "requests",
    "failures",
    "prompt_tokens",
    "output_tokens",
    "backend_seconds",
    "load_seconds",
)

GroupBy = Literal["team", "key", "model", "backend", "surface"]
GROUPS: dict[str, str] = {
    "team": "team",
    "key": "principal",
    "model": "model",
    "backend": "backend",
    "surface": "surface",
}
"""The API's `group_by` values and the ledger column each groups by."""

LedgerKey = tuple[datetime, str, str, str, str, str]
"""(bucket, principal, team, model, backend, surface): one ledger row."""


def hour_of(moment: datetime) -> datetime:
    """The hour bucket (UTC) `moment` falls in."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _nanoseconds(value: object) -> float:
    return value / 1e9 if isinstance(value, int | float) and value > 0 else 0.0


@dataclass
class UsageTotals:
    """Sums by ledger row, ready to be added in one statement."""

    rows: dict[LedgerKey, list[float]]

    def __init__(self) -> None:
        self.rows = {}

    def __bool__(self) -> bool:
        return bool(self.rows)

    def add(
        self,
        *,
        at: datetime,
        principal: str | None,
        team: str | None,
        model: str,
        backend: str | None,
        surface: str | None,
        success: bool,
        prompt_tokens: int,
        output_tokens: int,
        backend_seconds: float,
        load_seconds: float,
    ) -> None:
        key = (
            hour_of(at),
            (principal or "")[:200],
            (team or "")[:200],
            model[:512],
            (backend or "")[:512],
            (surface or "gateway")[:16],
        )
        sums = self.rows.get(key)
        if sums is None:
            sums = self.rows[key] = [0, 0, 0, 0, 0.0, 0.0]
        sums[0] += 1
        sums[1] += 0 if success else 1
        sums[2] += prompt_tokens
        sums[3] += output_tokens
        sums[4] += backend_seconds
        sums[5] += load_seconds

    def add_run(self, row: Execution) -> None:
        """A stored run (an `executions` row, as it is being inserted)."""
        meta = row.meta if isinstance(row.meta, dict) else {}
        team = meta.get("team")
        self.add(
            at=row.created_at or utc_now(),
            principal=row.principal,
            team=team if isinstance(team, str) else None,
            model=row.model,
            backend=row.backend,
            surface=row.surface,
            success=bool(row.success),
            prompt_tokens=row.prompt_tokens or 0,
            output_tokens=row.tokens_used or 0,
            backend_seconds=_nanoseconds(row.total_duration_ns),
            load_seconds=_nanoseconds(meta.get("load_duration")),
        )

    def merge(self, other: UsageTotals) -> None:
        for key, sums in other.rows.items():
            mine = self.rows.get(key)
            if mine is None:
                self.rows[key] = list(sums)
            else:
                for i, value in enumerate(sums):
                    mine[i] += value

    def params(self) -> list[dict[str, Any]]:
        """The upsert's parameters, one per row, sorted by key (one lock order for all)."""
        return [
            {**dict(zip(KEY_COLUMNS, key, strict=True)), **dict(zip(COUNTS, sums, strict=True))}
            for key, sums in sorted(self.rows.items())
        ]


_UPSERTS: dict[str, Any] = {}


def _upsert(dialect: str) -> Any:
    """`INSERT ... ON CONFLICT (key) DO UPDATE SET count = count + excluded.count`."""
    statement = _UPSERTS.get(dialect)
    if statement is None:
        table = Base.metadata.tables["usage_ledger"]
        insert = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
        statement = _UPSERTS[dialect] = insert.on_conflict_do_update(
            index_elements=list(KEY_COLUMNS),
            set_={c: table.c[c] + insert.excluded[c] for c in COUNTS},
        )
    return statement


def _dialect(target: AsyncSession | AsyncConnection) -> str:
    if isinstance(target, AsyncConnection):
        return target.dialect.name
    return target.get_bind().dialect.name


async def charge_totals(target: AsyncSession | AsyncConnection, totals: UsageTotals) -> None:
    """Add `totals` to the ledger, in the caller's transaction (one statement)."""
    if totals:
        await target.execute(_upsert(_dialect(target)), totals.params())


async def charge_runs(target: AsyncSession | AsyncConnection, runs: Iterable[Execution]) -> None:
    """Charge stored runs to the ledger, in the transaction that stores them."""
    totals = UsageTotals()
    for run in runs:
        totals.add_run(run)
    await charge_totals(target, totals)


def usage_query(
    group_by: GroupBy, since: datetime, until: datetime, principal: str | None = None
) -> Select[Any]:
    """The ledger's sums per hour, group and model in [since, until) (a key's own when
    `principal` is given): the model is kept so that each row can be priced."""
    column = Base.metadata.tables["usage_ledger"].c[GROUPS[group_by]]
    table = Base.metadata.tables["usage_ledger"]
    grouped = [table.c.bucket, column] + ([] if group_by == "model" else [table.c.model])
    query = select(*grouped, *(func.sum(table.c[c]).label(c) for c in COUNTS)).where(
        table.c.bucket >= since, table.c.bucket < until
    )
    if principal is not None:
        query = query.where(table.c.principal == principal)
    return query.group_by(*grouped).order_by(*grouped)


def day_of(moment: datetime) -> datetime:
    return hour_of(moment).replace(hour=0)


def bucket_start(moment: datetime, bucket: Literal["hour", "day"]) -> datetime:
    return day_of(moment) if bucket == "day" else hour_of(moment)
