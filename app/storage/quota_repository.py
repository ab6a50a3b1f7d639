"""Teams, and the quota counters every replica adds to (`quota_usage`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.storage.tables import ApiKey, QuotaUsage, Team

__all__ = ["QuotaCounters", "Teams", "Used"]


class Teams:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, row: Team) -> None:
        self.session.add(row)
        await self.session.flush()

    async def named(self, name: str) -> Team | None:
        return await self.session.get(Team, name)

    async def all(self) -> Sequence[Team]:
        return (await self.session.scalars(select(Team).order_by(Team.name))).all()

    async def active_keys(self, name: str) -> int:
        """How many active keys belong to the team."""
        query = (
            select(func.count())
            .select_from(ApiKey)
            .where(ApiKey.team == name, ApiKey.revoked_at.is_(None))
        )
        return int((await self.session.execute(query)).scalar_one())

    async def delete(self, row: Team) -> None:
        await self.session.delete(row)
        await self.session.flush()


@dataclass
class Used:
    """What a scope used in a window."""

    tokens: int = 0
    requests: int = 0
    backend_seconds: float = 0.0

    def add(self, other: Used) -> None:
        self.tokens += other.tokens
        self.requests += other.requests
        self.backend_seconds += other.backend_seconds

    def __bool__(self) -> bool:
        return bool(self.tokens or self.requests or self.backend_seconds)


class QuotaCounters:
    """Rows of `quota_usage`, keyed by (scope, period)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, deltas: dict[tuple[str, str], Used], at: datetime) -> None:
        """Add each delta to its row in one atomic upsert per row (`used = used + delta`):
        replicas adding at the same moment all count."""
        dialect = self.session.get_bind().dialect.name
        if dialect not in ("postgresql", "sqlite"):
            raise NotImplementedError(f"no upsert for the {dialect} dialect")
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        table = QuotaUsage.__table__.c
        for (scope, period), used in sorted(deltas.items()):
            statement = insert(QuotaUsage).values(
                scope=scope,
                period=period,
                tokens=used.tokens,
                requests=used.requests,
                backend_seconds=used.backend_seconds,
                updated_at=at.astimezone(UTC),
            )
            excluded = statement.excluded
            statement = statement.on_conflict_do_update(
                index_elements=["scope", "period"],
                set_={
                    "tokens": table.tokens + excluded.tokens,
                    "requests": table.requests + excluded.requests,
                    "backend_seconds": table.backend_seconds + excluded.backend_seconds,
                    "updated_at": excluded.updated_at,
                },
            )
            await self.session.execute(statement)

    async def read(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Used]:
        """The rows of these (scope, period) pairs; a pair with no row is absent."""
        wanted = list(keys)
        if not wanted:
            return {}
        found: dict[tuple[str, str], Used] = {}
        for start in range(0, len(wanted), 200):
            chunk = wanted[start : start + 200]
            query = select(QuotaUsage).where(tuple_(QuotaUsage.scope, QuotaUsage.period).in_(chunk))
            for row in (await self.session.scalars(query)).all():
                found[(row.scope, row.period)] = Used(
                    int(row.tokens), int(row.requests), float(row.backend_seconds)
                )
        return found
