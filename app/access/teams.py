"""Teams: a key belongs to at most one; a team's model allowlist narrows its keys' own and
its quotas are shared by its keys (see `app.access.quotas`).

A change to a team is seen by this process's key lookups at once, and by other processes
within `GATEWAY_KEY_CACHE_SECONDS` (the team is read with the key, and cached with it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import IntegrityError

from app.access.keys import UNSET
from app.access.principal import check_quotas
from app.storage.database_user import DatabaseUser
from app.storage.quota_repository import Teams
from app.storage.tables import Team

__all__ = ["TEAM_NAME_PATTERN", "TeamConflict", "TeamNotFound", "TeamStore", "team_dict"]

TEAM_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")


class TeamNotFound(LookupError):
    """No team has that name."""


class TeamConflict(ValueError):
    """The team exists already, or (deleting it) still has keys."""


def team_dict(row: Team) -> dict[str, Any]:
    return {
        "name": row.name,
        "models": row.models,
        "quotas": row.quotas,
        "created_at": row.created_at.isoformat(),
    }


def _patterns(models: Sequence[str] | None) -> list[str] | None:
    if models is None:
        return None
    patterns = [m.strip() for m in models if m.strip()]
    if not patterns or any(len(p) > 200 for p in patterns):
        raise ValueError("models must be one or more glob patterns such as 'llama3*'")
    return patterns


class TeamStore(DatabaseUser):
    """The teams of one database. `on_change` is told when a team changes (the key store
    forgets what it cached)."""

    def __init__(self, database_url: str, *, on_change: Callable[[], None] | None = None) -> None:
        super().__init__(database_url, name="team-store")
        self._on_change = on_change or (lambda: None)

    async def acreate(
        self,
        name: str,
        *,
        models: Sequence[str] | None = None,
        quotas: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A new team. ValueError for a bad name, pattern or quota; `TeamConflict` when a
        team has that name."""
        if not TEAM_NAME_PATTERN.match(name):
            raise ValueError(
                "name must be 1-100 letters, digits or . _ @ - (starting with a letter or digit)"
            )
        row = Team(
            name=name,
            models=_patterns(models),
            quotas=check_quotas(quotas),
            created_at=datetime.now(UTC),
        )
        await self._prepare()
        try:
            async with self.db.session() as session:
                teams = Teams(session)
                if await teams.named(name) is not None:
                    raise TeamConflict(f"a team named {name!r} exists")
                await teams.add(row)
                record = team_dict(row)
        except IntegrityError as exc:  # created by another process between look and insert
            raise TeamConflict(f"a team named {name!r} exists") from exc
        self._on_change()
        return record

    async def alist(self) -> list[dict[str, Any]]:
        await self._prepare()
        async with self.db.session() as session:
            return [team_dict(r) for r in await Teams(session).all()]

    async def aget(self, name: str) -> dict[str, Any]:
        """The team; `TeamNotFound` when there is none."""
        await self._prepare()
        async with self.db.session() as session:
            row = await Teams(session).named(name)
            if row is None:
                raise TeamNotFound(f"no team named {name!r}")
            return team_dict(row)

    async def aupdate(
        self, name: str, *, models: Any = UNSET, quotas: Any = UNSET
    ) -> dict[str, Any]:
        """Replace the team's models and/or quotas (None: any model, no quotas); fields left
        UNSET stay. `TeamNotFound`, or ValueError for a bad pattern or quota."""
        patterns = _patterns(models) if models is not UNSET else UNSET
        clean = check_quotas(quotas) if quotas is not UNSET else UNSET
        await self._prepare()
        async with self.db.session() as session:
            row = await Teams(session).named(name)
            if row is None:
                raise TeamNotFound(f"no team named {name!r}")
            if patterns is not UNSET:
                row.models = patterns
            if clean is not UNSET:
                row.quotas = clean
            await session.flush()
            record = team_dict(row)
        self._on_change()
        return record

    async def adelete(self, name: str) -> None:
        """Delete a team that has no active key; `TeamNotFound`, or `TeamConflict` while keys
        belong to it."""
        await self._prepare()
        async with self.db.session() as session:
            teams = Teams(session)
            row = await teams.named(name)
            if row is None:
                raise TeamNotFound(f"no team named {name!r}")
            count = await teams.active_keys(name)
            if count:
                raise TeamConflict(
                    f"team {name!r} still has {count} active key(s): move or revoke them first"
                )
            await teams.delete(row)
        self._on_change()
