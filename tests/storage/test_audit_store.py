"""The audit log's store and writer on both databases: one bad entry never holds back the
others, and an entry the database refuses as it is is stored escaped and flagged."""

from __future__ import annotations

import asyncio

from app.access import AuditStore, AuditWriter


def test_the_audit_log_keeps_who_did_what(db_url: str) -> None:
    async def run() -> list[dict[str, object]]:
        store = AuditStore(db_url)
        try:
            await store.arecord(
                actor="alice", action="config.update", target="default", outcome="ok"
            )
            await store.arecord(
                actor="bob", action="results.cleanup", target=None, outcome="ok", duration_ms=3.5
            )
            return await store.alist()
        finally:
            await store.aclose()

    entries = asyncio.run(run())
    assert [(e["actor"], e["action"]) for e in entries] == [
        ("bob", "results.cleanup"),
        ("alice", "config.update"),
    ]
    assert entries[0]["duration_ms"] == 3.5 and entries[1]["target"] == "default"
    assert not any(e["text_escaped"] for e in entries)


def test_an_entry_the_database_refuses_is_stored_escaped_and_the_rest_as_they_are(
    db_url: str,
) -> None:
    """NUL (PostgreSQL refuses it) and a lone surrogate (not UTF-8, refused by both) in a
    batch of good entries: every entry is stored, only the bad ones escaped."""
    targets = ["m1", "x\x00y", "m2", "bad\ud800surrogate", "m3"]

    async def run() -> tuple[list[dict[str, object]], int]:
        writer = AuditWriter(AuditStore(db_url), interval=60)
        try:
            for target in targets:
                writer.record(
                    actor="user", action="POST /api/show", target=target, outcome="failed"
                )
            await writer.flush()
            for n in range(3):  # later entries are not held back
                writer.record(
                    actor="user",
                    action="GET /gateway/models",
                    target=f"later{n}",
                    outcome="allowed",
                )
            await writer.flush()
            return await writer.store.alist(limit=50), writer.escaped
        finally:
            await writer.aclose()

    entries, escaped = asyncio.run(run())
    by_target = {e["target"]: e for e in entries}
    assert len(entries) == 8
    assert {"m1", "m2", "m3", "later0", "later1", "later2"} <= set(by_target)
    assert by_target["bad\\ud800surrogate"]["text_escaped"] is True
    nul = by_target.get("x\\u0000y") or by_target.get("x\x00y")
    assert nul is not None
    assert nul["text_escaped"] is ("postgresql" in db_url)
    assert escaped == (2 if "postgresql" in db_url else 1)
    assert not by_target["m2"]["text_escaped"]


def test_entries_wait_while_the_database_is_down_and_none_is_escaped(tmp_path: object) -> None:
    """A database that cannot be reached is not a bad entry: entries are kept, not escaped."""
    url = "postgresql+asyncpg://postgres@127.0.0.1:1/none"

    async def run() -> tuple[int, int]:
        writer = AuditWriter(AuditStore(url), interval=60)
        writer.record(actor="a", action="GET /x", target="t", outcome="allowed")
        writer.record(actor="a", action="GET /y", target="t\x00", outcome="allowed")
        await writer.flush()
        pending = len(writer._pending)
        writer._pending.clear()
        await writer.store.aclose()
        return pending, writer.escaped

    pending, escaped = asyncio.run(run())
    assert pending == 2 and escaped == 0
