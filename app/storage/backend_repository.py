"""Queries on the backend registry (`backends`). Like `repositories`, they take a session and
never commit: callers own the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.storage.repositories import upsert
from app.storage.tables import RegisteredBackend

__all__ = ["BackendRegistryRows"]


class BackendRegistryRows:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def all(self) -> Sequence[RegisteredBackend]:
        """Every row, in the order the backends were added."""
        query = select(RegisteredBackend).order_by(
            RegisteredBackend.created_at, RegisteredBackend.name
        )
        return (await self.session.scalars(query)).all()

    async def claim(self, name: str, spec: str, at: datetime) -> bool:
        """Record `name` as added with `spec`; False when a row of that name is in use.

        One statement (insert, or revive a removed row), so two processes adding the same
        name at once cannot both succeed.
        """
        values = {"name": name, "spec": spec, "created_at": at, "removed_at": None}
        table = RegisteredBackend.__table__
        dialect = self.session.get_bind().dialect.name
        statement: Insert
        if dialect == "postgresql":
            pg = postgresql.insert(RegisteredBackend).values(**values)
            statement = pg.on_conflict_do_update(
                index_elements=["name"],
                set_={"spec": pg.excluded.spec, "created_at": at, "removed_at": None},
                where=table.c.removed_at.is_not(None),
            )
        elif dialect == "sqlite":
            lite = sqlite.insert(RegisteredBackend).values(**values)
            statement = lite.on_conflict_do_update(
                index_elements=["name"],
                set_={"spec": lite.excluded.spec, "created_at": at, "removed_at": None},
                where=table.c.removed_at.is_not(None),
            )
        else:
            raise NotImplementedError(f"no upsert for the {dialect} dialect")
        claimed = await self.session.scalar(statement.returning(table.c.name))
        return claimed is not None

    async def mark_removed(self, name: str, spec: str, at: datetime) -> None:
        """Record `name` as removed (its last `spec` kept, for the record)."""
        values = {"name": name, "spec": spec, "created_at": at, "removed_at": at}
        await self.session.execute(
            upsert(
                self.session, RegisteredBackend, values, key=["name"], update=["spec", "removed_at"]
            )
        )
