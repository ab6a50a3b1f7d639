"""Queries on the placement rules (`placement_rules`). Like `repositories`, they take a
session and never commit: callers own the transaction."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.storage.repositories import upsert
from app.storage.tables import PlacementRules

__all__ = ["PlacementRows"]

ROW_ID = 1


class PlacementRows:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self) -> PlacementRules | None:
        """The rules set through the API, or None when they never were."""
        return await self.session.scalar(select(PlacementRules).where(PlacementRules.id == ROW_ID))

    async def put(self, rules: str, at: datetime) -> None:
        """Replace the rules (a JSON object's text) in one statement."""
        values = {"id": ROW_ID, "rules": rules, "updated_at": at}
        await self.session.execute(
            upsert(self.session, PlacementRules, values, key=["id"], update=["rules", "updated_at"])
        )
