"""The audit log's storage: entries written in batches, listed newest first.

Entries are kept whatever text the request carried: `arecord_escaped` stores an entry that
the database refused as it was (NUL in a path parameter on PostgreSQL, a lone surrogate,
an over-long target) with its text escaped and `text_escaped` set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from app.storage.database_user import DatabaseUser
from app.storage.escaping import escape_row
from app.storage.repositories import Audit, AuditFilter, new_id
from app.storage.tables import AuditEntry, built_row

__all__ = ["AuditStore", "audit_dict"]

AuditFields = Mapping[str, Any]
"""`actor`, `action`, `target`, `outcome`, `duration_ms`, `detail`, `surface`, `status`,
`client`, `created_at` (see `app.storage.tables.AuditEntry`)."""


def audit_row(entry: AuditFields) -> AuditEntry:
    def text(key: str, limit: int) -> str | None:
        value = entry.get(key)
        return None if value is None or value == "" else str(value)[:limit]

    return built_row(
        AuditEntry,
        dict(
            id=new_id(),
            actor=text("actor", 200) or "anonymous",
            action=text("action", 100) or "unknown",
            target=text("target", 512),
            outcome=text("outcome", 32) or "failed",
            duration_ms=entry.get("duration_ms"),
            detail=dict(entry["detail"]) if entry.get("detail") else None,
            surface=text("surface", 16),
            status=entry.get("status"),
            client=text("client", 64),
            created_at=entry.get("created_at") or datetime.now(UTC),
        ),
    )


def audit_dict(row: AuditEntry) -> dict[str, Any]:
    return {
        "id": row.id,
        "created_at": row.created_at.isoformat(),
        "actor": row.actor,
        "action": row.action,
        "target": row.target,
        "outcome": row.outcome,
        "duration_ms": row.duration_ms,
        "detail": row.detail,
        "surface": row.surface,
        "status": row.status,
        "client": row.client,
        "text_escaped": row.text_escaped,
    }


class AuditStore(DatabaseUser):
    """The audit log of one database."""

    def __init__(self, database_url: str) -> None:
        super().__init__(database_url, name="audit-store")

    async def arecord_many(self, entries: Sequence[AuditFields]) -> list[str]:
        """Store entries in one transaction (all or none); returns their ids."""
        return await self._write([audit_row(e) for e in entries])

    async def arecord(self, **entry: Any) -> str:
        """Store one entry (the `AuditFields`)."""
        return (await self.arecord_many([entry]))[0]

    async def arecord_escaped(self, entry: AuditFields) -> str | None:
        """Store an entry with its text escaped; None when there is nothing to escape (it
        was refused for another reason, and escaping cannot help)."""
        row = audit_row(entry)
        if not escape_row(row):
            return None
        return (await self._write([row]))[0]

    async def _write(self, rows: list[AuditEntry]) -> list[str]:
        async def write() -> list[str]:
            await self._prepare()
            async with self.db.session() as session:
                return await Audit(session).add_all(rows)

        return await self._shielded(write())

    async def alist(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        target: str | None = None,
        surface: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """The newest entries matching every filter given, newest first."""
        await self._prepare()
        where = AuditFilter(
            actor=actor,
            action=action,
            outcome=outcome,
            target=target,
            surface=surface,
            since=since,
            until=until,
        )
        async with self.db.session() as session:
            return [audit_dict(r) for r in await Audit(session).recent(limit, where)]

    async def acount(self) -> int:
        """How many entries are stored."""
        await self._prepare()
        async with self.db.session() as session:
            return await Audit(session).count()
