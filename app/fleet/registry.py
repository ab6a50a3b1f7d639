"""The backend registry: backends added or removed at run time, kept in the database (the
`backends` table), so every process and replica follows them and a restart keeps them.

What a process's pool should hold (`members`) is its start-up list (`GATEWAY_BACKENDS`)
with the registry's rows laid over it:

- a start-up entry stays (source `settings`) unless a row has its name;
- a row in use adds its spec (source `api`), in the order the rows were added; it wins
  over a start-up entry of the same name (one removed, then added again);
- a removed row keeps its name out, whether it came from the start-up list or the API,
  until it is added through the API again. So removing a `settings` backend is shared
  too, and a restart does not bring it back.

Writes check names and URLs against the members in the same transaction; a name is
claimed in one statement, so two processes cannot both add it. Circuit state and load
are not shared: each process keeps its own (`BackendPool`).

The placement rules set through the API (`placement_rules`, see
`app.fleet.placement`) are kept here too, and followed in the same rounds.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from app.backends.pool import BackendSpec, parse_backend, spec_text
from app.storage.backend_repository import BackendRegistryRows
from app.storage.database_user import DatabaseUser
from app.storage.placement_repository import PlacementRows
from app.storage.tables import RegisteredBackend

__all__ = ["BackendRegistry", "Member", "members"]

logger = logging.getLogger(__name__)

Source = Literal["settings", "api"]


@dataclass(frozen=True)
class Member:
    """A backend a pool should hold, and where it comes from."""

    spec: BackendSpec
    source: Source


def members(configured: Sequence[BackendSpec], rows: Sequence[RegisteredBackend]) -> list[Member]:
    """The start-up list with the registry's `rows` (in the order added) laid over it."""
    named = {row.name for row in rows}
    out = [Member(spec, "settings") for spec in configured if spec.name not in named]
    for row in rows:
        if row.removed_at is not None:
            continue
        try:
            spec = parse_backend(row.spec)
        except ValueError:
            logger.warning("backend registry: unreadable entry %r left out", row.spec)
            continue
        out.append(Member(spec, "api"))
    return out


class BackendRegistry(DatabaseUser):
    """The backend registry of one database."""

    def __init__(self, database_url: str) -> None:
        super().__init__(database_url, name="backend-registry")

    async def amembers(self, configured: Sequence[BackendSpec]) -> list[Member]:
        """The backends a pool started from `configured` should hold now."""
        await self._prepare()
        async with self.db.session() as session:
            return members(configured, await BackendRegistryRows(session).all())

    async def aadd(self, spec: BackendSpec, configured: Sequence[BackendSpec]) -> None:
        """Record `spec` as added. ValueError when its name or URL is already in use."""
        await self._prepare()
        async with self.db.session() as session:
            rows = BackendRegistryRows(session)
            for member in members(configured, await rows.all()):
                if spec.name == member.spec.name or spec.url == member.spec.url:
                    raise _clash(spec, member.spec)
            if not await rows.claim(spec.name, spec_text(spec), datetime.now(UTC)):
                raise _clash(spec, spec)

    async def aremove(self, backend: str, configured: Sequence[BackendSpec]) -> BackendSpec:
        """Record the backend named `backend` (its name or URL) as removed; returns it.

        ValueError when there is no such backend, or it is the last one.
        """
        if backend == "all":
            raise ValueError("name one backend to remove, not 'all'")
        wanted = backend.rstrip("/")
        await self._prepare()
        async with self.db.session() as session:
            rows = BackendRegistryRows(session)
            current = members(configured, await rows.all())
            found = next((m.spec for m in current if wanted in (m.spec.name, m.spec.url)), None)
            if found is None:
                names = ", ".join(m.spec.name for m in current)
                raise ValueError(f"no backend named {backend!r} (configured: {names})")
            if len(current) == 1:
                raise ValueError(f"backend {found.name!r} is the last one; add another first")
            await rows.mark_removed(found.name, spec_text(found), datetime.now(UTC))
            return found

    async def aplacement(self) -> str | None:
        """The placement rules set through the API (a JSON object's text), or None."""
        await self._prepare()
        async with self.db.session() as session:
            row = await PlacementRows(session).get()
            return None if row is None else row.rules

    async def aset_placement(self, rules: str) -> None:
        """Replace the placement rules (a JSON object's text) for every process."""
        await self._prepare()
        async with self.db.session() as session:
            await PlacementRows(session).put(rules, datetime.now(UTC))


def _clash(spec: BackendSpec, other: BackendSpec) -> ValueError:
    return ValueError(
        f"backend {spec.name!r} ({spec.url}) clashes with {other.name!r} ({other.url}), "
        "which is already in the pool"
    )
