"""The OpenAI Responses API's stored responses: what the gateway keeps beside the core so
that a conversation Ollama would forget can be continued on any replica.

A response is saved after the run that produced it was stored, as an index over that run
(`ResponseRecord.execution_id`): the run's row holds the answer (text, thinking, tool
calls, counters, error), the response's row the turn's own input items, the ids of its
output items and the request fields it echoes. Reading one back joins the two
(`StoredTurn`); a conversation (`previous_response_id`) is read in one query, oldest turn
first, however long it is (see `app.storage.response_repository`). The shapes of the
Responses API itself are the API layer's (`app.api.openai.responses`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row

from app.storage.database_user import DatabaseUser
from app.storage.group_commit import GroupCommit, loop_group_commit
from app.storage.repositories import insert_rows
from app.storage.response_repository import ResponseRows
from app.storage.tables import StoredResponse

__all__ = ["ConversationBroken", "ResponseRecord", "StoredResponses", "StoredTurn"]


@dataclass(frozen=True)
class ResponseRecord:
    """One stored response (a `responses` row)."""

    id: str
    principal: str | None
    """The API key (by name) it belongs to; None when anonymous."""
    previous_response_id: str | None
    depth: int
    """Responses before it in its conversation."""
    execution_id: str
    """The stored run that produced it."""
    model: str
    status: str
    input_items: list[dict[str, Any]]
    """Its own input items, each with an id."""
    output_items: list[dict[str, Any]]
    """Its output items without their text (the run holds it)."""
    params: dict[str, Any]
    """The request fields a response echoes."""
    created_at: datetime
    completed_at: datetime | None = None


@dataclass(frozen=True)
class StoredTurn:
    """A stored response read back with the parts of its run."""

    record: ResponseRecord
    text: str
    """The answer's text (what a failed run had produced, for a failed one)."""
    thinking: str | None
    tool_calls: list[dict[str, Any]]
    error: str | None
    done_reason: str | None
    input_tokens: int | None
    output_tokens: int | None


class ConversationBroken(LookupError):
    """A response of a conversation was deleted: the ones after it cannot be continued."""

    def __init__(self, response_id: str, missing: str) -> None:
        super().__init__(
            f"response '{response_id}' continues response '{missing}', which was deleted"
        )
        self.response_id = response_id
        self.missing = missing


def _turn(row: Row[Any]) -> StoredTurn:
    stored: StoredResponse = row[0]
    calls = row.tool_calls
    return StoredTurn(
        record=ResponseRecord(
            id=stored.id,
            principal=stored.principal,
            previous_response_id=stored.previous_response_id,
            depth=stored.depth,
            execution_id=stored.execution_id,
            model=stored.model,
            status=stored.status,
            input_items=list(stored.input_items),
            output_items=list(stored.output_items),
            params=dict(stored.params),
            created_at=stored.created_at,
            completed_at=stored.completed_at,
        ),
        text=str(row.response or row.partial_response or ""),
        thinking=str(row.thinking) if row.thinking else None,
        tool_calls=[c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else [],
        error=row.error,
        done_reason=row.done_reason,
        input_tokens=row.prompt_tokens,
        output_tokens=row.tokens_used,
    )


class StoredResponses(DatabaseUser):
    """The stored responses of one database (`Services.responses`)."""

    def __init__(self, database_url: str) -> None:
        super().__init__(database_url, name="stored-responses")
        self._committers: dict[asyncio.AbstractEventLoop, GroupCommit[StoredResponse]] = {}

    def _group_commit(self) -> GroupCommit[StoredResponse]:
        """This loop's group commit: responses saved at the same time share a transaction
        (as runs do), instead of a session and a commit each beside the runs'."""

        async def write_rows(rows: Sequence[StoredResponse]) -> None:
            async with self.db.engine().begin() as connection:  # Core: no ORM session
                await insert_rows(connection, rows)

        return loop_group_commit(self._committers, lambda: GroupCommit(write_rows))

    async def asave(self, record: ResponseRecord) -> None:
        """Store a response (its run must be stored already); returns once it is committed.
        The write runs to its end even when the caller is cancelled (a client that left as
        the answer ended)."""

        async def write() -> None:
            await self._prepare()
            await self._group_commit().add(
                StoredResponse(
                    id=record.id,
                    principal=record.principal,
                    previous_response_id=record.previous_response_id,
                    depth=record.depth,
                    execution_id=record.execution_id,
                    model=record.model,
                    status=record.status,
                    input_items=record.input_items,
                    output_items=record.output_items,
                    params=record.params,
                    created_at=record.created_at,
                    completed_at=record.completed_at,
                )
            )

        await self._shielded(write())

    async def aget(self, response_id: str) -> StoredTurn | None:
        await self._prepare()
        async with self.db.session() as session:
            row = await ResponseRows(session).get(response_id)
        return _turn(row) if row is not None else None

    async def aowner(self, response_id: str) -> tuple[str | None, str] | None:
        """(principal, model) of a stored response, or None when there is none."""
        await self._prepare()
        async with self.db.session() as session:
            return await ResponseRows(session).owner(response_id)

    async def aconversation(self, response_id: str) -> list[StoredTurn]:
        """The response and every one before it, oldest first (empty: no such response).

        Raises `ConversationBroken` when one of those before it was deleted."""
        await self._prepare()
        async with self.db.session() as session:
            rows = await ResponseRows(session).conversation(response_id)
        turns = [_turn(row) for row in rows]
        if turns and turns[0].record.previous_response_id is not None:
            raise ConversationBroken(response_id, turns[0].record.previous_response_id)
        return turns

    async def adelete(self, response_id: str) -> bool:
        await self._prepare()
        async with self.db.session() as session:
            return await ResponseRows(session).delete(response_id)
