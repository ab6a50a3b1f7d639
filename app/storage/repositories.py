"""Queries, one class per aggregate. They take a session and never commit: callers own
the transaction (`Database.session()`)."""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from sqlalchemy import Insert, and_, delete, func, inspect, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.storage.tables import (
    ApiKey,
    AuditEntry,
    Base,
    Batch,
    BenchmarkReport,
    Comparison,
    Execution,
    GatewayConfig,
    Job,
    ModelConfig,
    ReportRow,
    utc_now,
)
from app.storage.usage_ledger import charge_runs


def new_id() -> str:
    return uuid.uuid4().hex


def json_size(value: Any) -> int:
    """Bytes the value takes as JSON: the 'size' users see in output stats."""
    return len(json.dumps(value, default=str, ensure_ascii=False).encode("utf-8", "surrogatepass"))


CURSOR_PATTERN = r"^[0-9]{1,17}\.[0-9a-f]{32}$"
"""A cursor is `<microseconds since the epoch>.<row id>`: any string of that shape is a
valid position, so a client can never send one that cannot be read."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def encode_cursor(created_at: datetime, row_id: str) -> str:
    aware = created_at if created_at.tzinfo is not None else created_at.replace(tzinfo=UTC)
    micros = (aware - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}.{row_id}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The position a cursor names; ValueError when it is not one of ours."""
    if not re.fullmatch(CURSOR_PATTERN, cursor):
        raise ValueError(f"invalid cursor {cursor!r}")
    micros, row_id = cursor.split(".", 1)
    try:
        return _EPOCH + timedelta(microseconds=int(micros)), row_id
    except OverflowError as exc:
        raise ValueError(f"invalid cursor {cursor!r}") from exc


def upsert(
    session: AsyncSession,
    table: type[Base],
    values: dict[str, Any],
    *,
    key: Sequence[str],
    update: Sequence[str],
) -> Insert:
    """`INSERT ... ON CONFLICT (key) DO UPDATE SET update...` on SQLite and PostgreSQL.

    One statement, so two writers racing for the same key both succeed (the last one
    wins) instead of one failing on the unique constraint, as get-then-insert would.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        pg = postgresql.insert(table).values(**values)
        return pg.on_conflict_do_update(
            index_elements=list(key), set_={c: pg.excluded[c] for c in update}
        )
    if dialect == "sqlite":
        lite = sqlite.insert(table).values(**values)
        return lite.on_conflict_do_update(
            index_elements=list(key), set_={c: lite.excluded[c] for c in update}
        )
    raise NotImplementedError(f"no upsert for the {dialect} dialect")


async def insert_rows(session: AsyncSession | AsyncConnection, rows: Sequence[Base]) -> None:
    """One Core INSERT of rows of one table, as the ORM would write them: every column of
    every row (one key set for the executemany), a value that was not set taking the
    column's Python default, or NULL. Does not touch the objects."""
    if not rows:
        return
    table = Base.metadata.tables[rows[0].__tablename__]
    columns = _insert_columns(type(rows[0]))
    params = []
    for row in rows:
        values = row.__dict__
        params.append(
            {
                name: values[key] if key in values else (default() if default else None)
                for key, name, default in columns
            }
        )
    await session.execute(table.insert(), params)


_INSERT_COLUMNS: dict[type[Base], list[tuple[str, str, Callable[[], Any] | None]]] = {}


def _insert_columns(cls: type[Base]) -> list[tuple[str, str, Callable[[], Any] | None]]:
    """(attribute, column name, Python default or None) of each column of `cls`."""
    cached = _INSERT_COLUMNS.get(cls)
    if cached is None:
        cached = []
        for attr in inspect(cls).column_attrs:
            column = attr.columns[0]
            default = column.default
            make: Callable[[], Any] | None = None
            if default is not None and default.is_callable:
                make = functools.partial(default.arg, None)
            elif default is not None and default.is_scalar:
                make = functools.partial(_constant, default.arg)
            cached.append((attr.key, column.name, make))
        _INSERT_COLUMNS[cls] = cached
    return cached


def _constant(value: Any) -> Any:
    return value


@dataclass
class ExecutionFilter:
    models: Sequence[str] | None = None
    """Any of these names (the spellings of one model)."""
    kind: str | None = None
    surface: str | None = None
    principal: str | None = None
    success: bool | None = None
    since: datetime | None = None
    until: datetime | None = None


class Executions:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, row: Execution) -> str:
        """Insert one run, charged to the usage ledger in the same transaction."""
        await charge_runs(self.session, [row])
        self.session.add(row)
        await self.session.flush()
        return row.id

    @staticmethod
    async def insert(connection: AsyncConnection, rows: Sequence[Execution]) -> None:
        """`add_all` on a connection (no session): the group commit's write."""
        await insert_rows(connection, rows)
        await charge_runs(connection, rows)

    async def add_all(self, rows: Sequence[Execution]) -> list[str]:
        """Insert `rows` with one Core INSERT (executemany), not the ORM's unit of work:
        the objects stay transient and unchanged (the spool can still encode them)."""
        await insert_rows(self.session, rows)
        await charge_runs(self.session, rows)
        return [row.id for row in rows]

    async def get(self, row_id: str) -> Execution | None:
        return await self.session.get(Execution, row_id)

    async def delete(self, row_id: str) -> bool:
        result = await self.session.execute(delete(Execution).where(Execution.id == row_id))
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def page(
        self, where: ExecutionFilter, limit: int, cursor: str | None
    ) -> tuple[Sequence[Execution], str | None]:
        """Newest first, keyset-paginated on (created_at, id)."""
        query = select(Execution)
        if where.models is not None:
            query = query.where(Execution.model.in_(where.models))
        if where.kind is not None:
            query = query.where(Execution.kind == where.kind)
        if where.surface is not None:
            query = query.where(Execution.surface == where.surface)
        if where.principal is not None:
            query = query.where(Execution.principal == where.principal)
        if where.success is not None:
            query = query.where(Execution.success == where.success)
        if where.since is not None:
            query = query.where(Execution.created_at >= where.since)
        if where.until is not None:
            query = query.where(Execution.created_at < where.until)
        if cursor is not None:
            at, row_id = decode_cursor(cursor)
            query = query.where(
                or_(
                    Execution.created_at < at,
                    and_(Execution.created_at == at, Execution.id < row_id),
                )
            )
        query = query.order_by(Execution.created_at.desc(), Execution.id.desc()).limit(limit + 1)
        rows = (await self.session.scalars(query)).all()
        if len(rows) > limit:
            last = rows[limit - 1]
            return rows[:limit], encode_cursor(last.created_at, last.id)
        return rows, None

    async def linked(self, column: str, group_id: str) -> Sequence[Execution]:
        """A report's runs in their order: a job's by index, others as they were stored."""
        query = (
            select(Execution)
            .where(getattr(Execution, column) == group_id)
            .order_by(Execution.job_index.asc().nulls_last(), Execution.created_at, Execution.id)
        )
        return (await self.session.scalars(query)).all()


class Reports:
    """Batches, benchmark reports and comparisons: the groups runs link to."""

    KINDS: ClassVar[dict[str, Any]] = {
        "batch": Batch,
        "benchmark": BenchmarkReport,
        "comparison": Comparison,
    }

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, row: ReportRow) -> str:
        self.session.add(row)
        await self.session.flush()
        return row.id

    async def get(self, kind: str, row_id: str) -> ReportRow | None:
        row: ReportRow | None = await self.session.get(self.KINDS[kind], row_id)
        return row

    LINKS: ClassVar[dict[str, Any]] = {
        "batch": Execution.batch_id,
        "benchmark": Execution.benchmark_id,
        "comparison": Execution.comparison_id,
    }

    async def page(
        self,
        kind: str,
        limit: int,
        cursor: str | None,
        models: Sequence[str] | None = None,
        *,
        principal: str | None = None,
    ) -> tuple[Sequence[Any], str | None]:
        """Newest first. With `models`: reports of that model or with a run of it (a
        comparison, a batch over several models). With `principal`: that key's only."""
        table = self.KINDS[kind]
        query = select(table)
        if principal is not None:
            query = query.where(table.principal == principal)
        if models is not None:
            has_run = table.id.in_(select(self.LINKS[kind]).where(Execution.model.in_(models)))
            own = table.model.in_(models) if hasattr(table, "model") else None
            query = query.where(has_run if own is None else or_(own, has_run))
        if cursor is not None:
            at, row_id = decode_cursor(cursor)
            query = query.where(
                or_(table.created_at < at, and_(table.created_at == at, table.id < row_id))
            )
        query = query.order_by(table.created_at.desc(), table.id.desc()).limit(limit + 1)
        rows = (await self.session.scalars(query)).all()
        if len(rows) > limit:
            last = rows[limit - 1]
            return rows[:limit], encode_cursor(last.created_at, last.id)
        return rows, None


class ModelConfigs:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, model: str, name: str) -> ModelConfig | None:
        query = select(ModelConfig).where(
            ModelConfig.model == model, ModelConfig.config_name == name
        )
        return (await self.session.scalars(query)).first()

    async def put(self, model: str, name: str, config: dict[str, Any]) -> str:
        """Store or replace the (model, name) config; returns the row's id (kept on replace)."""
        now = utc_now()
        statement = upsert(
            self.session,
            ModelConfig,
            {
                "id": new_id(),
                "model": model,
                "config_name": name,
                "config": config,
                "size_bytes": json_size(config),
                "created_at": now,
                "updated_at": now,
            },
            key=("model", "config_name"),
            update=("config", "size_bytes", "updated_at"),
        )
        row_id = await self.session.scalar(statement.returning(ModelConfig.id))
        assert row_id is not None
        return str(row_id)

    async def all(self, models: Sequence[str] | None = None) -> Sequence[ModelConfig]:
        query = select(ModelConfig).order_by(ModelConfig.model, ModelConfig.config_name)
        if models is not None:
            query = query.where(ModelConfig.model.in_(models))
        return (await self.session.scalars(query)).all()


class GatewayConfigs:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, name: str = "default") -> dict[str, Any] | None:
        row = await self.session.get(GatewayConfig, name)
        return dict(row.data) if row is not None else None

    async def put(self, data: dict[str, Any], name: str = "default") -> None:
        statement = upsert(
            self.session,
            GatewayConfig,
            {"name": name, "data": data, "updated_at": utc_now()},
            key=("name",),
            update=("data", "updated_at"),
        )
        await self.session.execute(statement)


@dataclass
class AuditFilter:
    actor: str | None = None
    action: str | None = None
    outcome: str | None = None
    target: str | None = None
    surface: str | None = None
    since: datetime | None = None
    until: datetime | None = None


class ApiKeys:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, row: ApiKey) -> str:
        self.session.add(row)
        await self.session.flush()
        return row.id

    async def by_hash(self, key_hash: str) -> ApiKey | None:
        query = select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
        return (await self.session.scalars(query)).first()

    async def active_named(self, name: str) -> ApiKey | None:
        query = select(ApiKey).where(ApiKey.name == name, ApiKey.revoked_at.is_(None))
        return (await self.session.scalars(query)).first()

    async def all(self, include_revoked: bool = False) -> Sequence[ApiKey]:
        query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
        if not include_revoked:
            query = query.where(ApiKey.revoked_at.is_(None))
        return (await self.session.scalars(query)).all()

    async def count_active(self) -> int:
        query = select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))
        return int((await self.session.execute(query)).scalar_one())

    async def active(self, key_id_or_name: str) -> ApiKey | None:
        """The active key with this id (or, failing that, this name)."""
        for column in (ApiKey.id, ApiKey.name):
            query = select(ApiKey).where(column == key_id_or_name, ApiKey.revoked_at.is_(None))
            row = (await self.session.scalars(query)).first()
            if row is not None:
                return row
        return None

    async def revoke(self, key_id_or_name: str, at: datetime) -> ApiKey | None:
        """Revoke the active key with this id (or, failing that, this name)."""
        for column in (ApiKey.id, ApiKey.name):
            query = select(ApiKey).where(column == key_id_or_name, ApiKey.revoked_at.is_(None))
            row = (await self.session.scalars(query)).first()
            if row is not None:
                row.revoked_at = at
                await self.session.flush()
                return row
        return None


class Audit:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, entry: AuditEntry) -> str:
        self.session.add(entry)
        await self.session.flush()
        return entry.id

    async def add_all(self, entries: Sequence[AuditEntry]) -> list[str]:
        self.session.add_all(entries)
        await self.session.flush()
        return [entry.id for entry in entries]

    async def count(self) -> int:
        return int((await self.session.execute(select(func.count(AuditEntry.id)))).scalar_one())

    async def recent(self, limit: int, where: AuditFilter | None = None) -> Sequence[AuditEntry]:
        query = select(AuditEntry)
        where = where or AuditFilter()
        for column, value in (
            (AuditEntry.actor, where.actor),
            (AuditEntry.action, where.action),
            (AuditEntry.outcome, where.outcome),
            (AuditEntry.target, where.target),
            (AuditEntry.surface, where.surface),
        ):
            if value is not None:
                query = query.where(column == value)
        if where.since is not None:
            query = query.where(AuditEntry.created_at >= where.since)
        if where.until is not None:
            query = query.where(AuditEntry.created_at < where.until)
        query = query.order_by(AuditEntry.created_at.desc(), AuditEntry.id.desc()).limit(limit)
        return (await self.session.scalars(query)).all()


async def counts_and_sizes(
    session: AsyncSession, table: type[Base], principal: str | None = None
) -> tuple[int, int]:
    """How many rows and their `size_bytes`; with `principal`, of that API key's rows."""
    column = table.size_bytes  # type: ignore[attr-defined]
    query = select(func.count(), func.sum(column)).select_from(table)
    if principal is not None:
        query = query.where(table.principal == principal)  # type: ignore[attr-defined]
    count, size = (await session.execute(query)).one()
    return int(count or 0), int(size or 0)


async def delete_older_than(session: AsyncSession, table: type[Base], cutoff: datetime) -> int:
    result = await session.execute(
        delete(table).where(table.created_at < cutoff)  # type: ignore[attr-defined]
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def delete_finished_jobs(session: AsyncSession, cutoff: datetime) -> int:
    """Delete jobs (with their events) that finished before `cutoff`."""
    result = await session.execute(
        delete(Job).where(Job.finished_at.is_not(None), Job.finished_at < cutoff)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
