"""Queries on the stored responses of the OpenAI Responses API (`responses`). Like
`repositories`, they take a session and never commit: callers own the transaction.

A response is read together with the run that produced it (its `executions` row gives the
text, thinking, tool calls, counters and error), and a conversation is read in one query
however long it is: a recursive CTE walks `previous_response_id` from the newest response
to the first, and the rows come back oldest first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.storage.tables import Execution, StoredResponse

__all__ = ["ResponseRows"]


def _with_run() -> Any:
    """A response's row with the parts of its run a response shows (not the run's
    messages: they are the conversation, which the responses hold turn by turn)."""
    meta = Execution.meta
    return select(
        StoredResponse,
        Execution.response,
        Execution.error,
        Execution.done_reason,
        Execution.prompt_tokens,
        Execution.tokens_used,
        meta["thinking"].label("thinking"),
        meta["tool_calls"].label("tool_calls"),
        meta["partial_response"].label("partial_response"),
    ).join(Execution, Execution.id == StoredResponse.execution_id)


class ResponseRows:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, response_id: str) -> Row[Any] | None:
        """One response with its run's parts (see `_with_run`), or None."""
        query = _with_run().where(StoredResponse.id == response_id)
        return (await self.session.execute(query)).first()

    async def owner(self, response_id: str) -> tuple[str | None, str] | None:
        """(principal, model) of a response, or None when there is none."""
        query = select(StoredResponse.principal, StoredResponse.model).where(
            StoredResponse.id == response_id
        )
        found = (await self.session.execute(query)).first()
        return (found[0], found[1]) if found is not None else None

    async def conversation(self, response_id: str) -> Sequence[Row[Any]]:
        """The response and every response before it in its conversation, oldest first,
        each with its run's parts: one query (a recursive CTE over `previous_response_id`).

        UNION (not UNION ALL) ends the walk even on a cycle, which the API never makes.
        A response whose predecessor was deleted ends the walk there: the first row's
        `previous_response_id` then names the missing one.
        """
        table = StoredResponse.__table__
        walk = (
            select(table.c.id, table.c.previous_response_id)
            .where(table.c.id == response_id)
            .cte("walk", recursive=True)
        )
        walk = walk.union(
            select(table.c.id, table.c.previous_response_id).where(
                table.c.id == walk.c.previous_response_id
            )
        )
        query = (
            _with_run()
            .join(walk, walk.c.id == StoredResponse.id)
            .order_by(StoredResponse.depth, StoredResponse.created_at)
        )
        return (await self.session.execute(query)).all()

    async def delete(self, response_id: str) -> bool:
        result = await self.session.execute(
            delete(StoredResponse).where(StoredResponse.id == response_id)
        )
        return bool(getattr(result, "rowcount", 0))
