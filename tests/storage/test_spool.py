"""The spool (`app.storage.spool`) against real databases: what is appended is on disk
before `append` returns, bounded; replay writes it in order, each row once, also when a
crash came between writing to the database and recording how far it got."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from app.ollama.stored_rows import batch_row, execution_row
from app.ollama.types import ModelExecutionResult
from app.storage.db import Database
from app.storage.group_commit import GroupCommit
from app.storage.outage import SpoolFull, is_outage
from app.storage.repositories import Executions
from app.storage.spool import RowSpool, SpoolDepth
from app.storage.tables import Execution
from tests.support.servers import free_port

pytestmark = pytest.mark.timeout(60)


def run(i: int, prompt: str | None = None) -> Execution:
    result = ModelExecutionResult(
        model_name="llama3.1:8b",
        prompt=prompt if prompt is not None else f"prompt {i}",
        response=f"response {i} é ✓",
        execution_time=0.25,
        tokens_used=i,
        metadata={"backend": "http://b", "request": {"options": {"temperature": 0.5}}},
    )
    row = execution_row(result, kind="generate")
    row.created_at = datetime(2030, 1, 1, tzinfo=UTC) + timedelta(seconds=i)
    return row


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    if database.engine().dialect.name == "postgresql":
        # Which rows are inserted, in which order: a real trigger, in the database.
        async with database.session() as session:
            await session.execute(
                text("CREATE TABLE insert_log (seq serial PRIMARY KEY, row_id text)")
            )
            await session.execute(
                text(
                    "CREATE FUNCTION log_insert() RETURNS trigger AS $$ BEGIN "
                    "INSERT INTO insert_log (row_id) VALUES (NEW.id); RETURN NEW; END $$ "
                    "LANGUAGE plpgsql"
                )
            )
            await session.execute(
                text(
                    "CREATE TRIGGER log_insert AFTER INSERT ON executions "
                    "FOR EACH ROW EXECUTE FUNCTION log_insert()"
                )
            )
    else:
        async with database.session() as session:
            await session.execute(
                text("CREATE TABLE insert_log (seq INTEGER PRIMARY KEY, row_id TEXT)")
            )
            await session.execute(
                text(
                    "CREATE TRIGGER log_insert AFTER INSERT ON executions BEGIN "
                    "INSERT INTO insert_log (row_id) VALUES (NEW.id); END"
                )
            )
    yield database
    await database.dispose()


async def inserted(db: Database) -> list[str]:
    """Every row id inserted into `executions`, in the order of the inserts."""
    async with db.session() as session:
        rows = await session.execute(text("SELECT row_id FROM insert_log ORDER BY seq"))
        return [r[0] for r in rows]


async def stored_ids(db: Database) -> list[str]:
    async with db.session() as session:
        return [r[0] for r in await session.execute(text("SELECT id FROM executions"))]


def lines(spool: RowSpool) -> list[dict[str, object]]:
    return [json.loads(line) for line in spool.path.read_bytes().splitlines()]


async def test_appended_entries_are_on_disk_and_replayed_in_order_once(
    db: Database, tmp_path: Path, db_url: str
) -> None:
    spool = RowSpool(tmp_path, db_url, max_bytes=1 << 20)
    assert spool.depth() == SpoolDepth(0, 0) and not spool.has_pending()
    rows = [run(i) for i in range(30)]
    expected = {r.id: (r.prompt, r.response, r.created_at) for r in rows}
    for start in range(0, 30, 7):  # appends of 7, 7, 7, 7 and 2 entries
        await spool.aappend([[row] for row in rows[start : start + 7]])
    # On disk before append returned: a new reader (another process) sees every entry.
    assert [line["rows"][0]["values"]["id"] for line in lines(spool)] == [r.id for r in rows]  # type: ignore[index]
    depth = spool.depth()
    assert depth.entries == 30 and depth.bytes == spool.path.stat().st_size
    assert await stored_ids(db) == []

    assert await spool.replay(db, batch=8) == 30
    assert await inserted(db) == [r.id for r in rows]  # in the order they were spooled
    async with db.session() as session:
        for row_id, (prompt, response, created_at) in expected.items():
            stored = await Executions(session).get(row_id)
            assert stored is not None
            assert (stored.prompt, stored.response, stored.created_at) == (
                prompt,
                response,
                created_at,
            )
            assert stored.meta == {
                "backend": "http://b",
                "request": {"options": {"temperature": 0.5}},
            }
            assert stored.options == {"options": {"temperature": 0.5}}
            assert stored.text_escaped is False and stored.surface == "gateway"
    assert spool.depth() == SpoolDepth(0, 0) and not spool.has_pending()
    assert spool.path.stat().st_size == 0  # emptied once all was written

    assert await spool.replay(db) == 0  # nothing twice
    assert len(await inserted(db)) == 30


async def test_a_crash_between_the_database_write_and_the_position_stores_nothing_twice(
    db: Database, tmp_path: Path, db_url: str
) -> None:
    """The spool's files as a crash leaves them after the rows were committed but before
    the position was recorded (a copy taken before the replay, put back after it): the
    next replay (a new process) writes the rest, and no row twice."""
    spool = RowSpool(tmp_path / "spool", db_url, max_bytes=1 << 20)
    rows = [run(i) for i in range(10)]
    await spool.aappend([[row] for row in rows])
    before_replay = tmp_path / "copy"
    shutil.copytree(spool.dir, before_replay)

    assert await spool.replay(db) == 10
    shutil.rmtree(spool.dir)
    shutil.copytree(before_replay, spool.dir)  # the position was never written
    restarted = RowSpool(tmp_path / "spool", db_url, max_bytes=1 << 20)
    assert restarted.depth().entries == 10
    more = [run(i) for i in range(10, 13)]
    await restarted.aappend([[row] for row in more])

    assert await restarted.replay(db) == 13
    assert await inserted(db) == [r.id for r in rows + more]  # the 10 were not inserted again
    assert sorted(await stored_ids(db)) == sorted(r.id for r in rows + more)
    assert restarted.depth() == SpoolDepth(0, 0)
    # The usage ledger charged each run once too, though 10 of them were replayed twice.
    async with db.session() as session:
        ledger = (
            await session.execute(
                text("SELECT sum(requests), sum(output_tokens) FROM usage_ledger")
            )
        ).one()
    assert tuple(ledger) == (13, sum(range(13)))


async def test_the_spool_is_bounded(db: Database, tmp_path: Path, db_url: str) -> None:
    spool = RowSpool(tmp_path, db_url, max_bytes=4000)
    written = 0
    with pytest.raises(SpoolFull, match="GATEWAY_SPOOL_MAX_BYTES=4000"):
        for i in range(100):
            await spool.aappend([[run(i)]])
            written += 1
    assert 0 < written < 100
    size = spool.path.stat().st_size
    assert size <= 4000 and spool.depth().entries == written  # the refused one left no trace
    with pytest.raises(SpoolFull):  # all of an append or none of it
        await spool.aappend([[run(200)], [run(201)]])
    assert spool.path.stat().st_size == size
    assert await spool.replay(db) == written
    await spool.aappend([[run(300)]])  # room again once written
    assert is_outage(SpoolFull("full"))
    assert RowSpool(tmp_path / "none", db_url, max_bytes=0).has_room() is False


async def test_a_report_and_its_runs_are_one_entry(
    db: Database, tmp_path: Path, db_url: str
) -> None:
    spool = RowSpool(tmp_path, db_url, max_bytes=1 << 20)
    results = [
        ModelExecutionResult(model_name="m", prompt=f"p{i}", response="r", execution_time=0.1)
        for i in range(3)
    ]
    batch = batch_row(results, "nightly")
    runs = [execution_row(r, kind="batch_item", batch_id=batch.id) for r in results]
    await spool.aappend([[batch, *runs]])
    assert spool.depth().entries == 1
    assert await spool.replay(db) == 1
    async with db.session() as session:
        linked = await Executions(session).linked("batch_id", batch.id)
        assert [r.prompt for r in linked] == ["p0", "p1", "p2"]
        names = await session.execute(text("SELECT name, total FROM batches"))
        assert names.all() == [("nightly", 3)]


async def test_a_torn_line_and_a_refused_entry_are_set_aside_and_the_rest_written(
    db: Database, tmp_path: Path, db_url: str
) -> None:
    """A crash in the middle of an append leaves half a line; a row the database refuses
    for good (a job that does not exist) is set aside; a row it refuses as it is (NUL, on
    PostgreSQL) is stored escaped. The entries around them are written."""
    spool = RowSpool(tmp_path, db_url, max_bytes=1 << 20)
    first = run(1)
    await spool.aappend([[first]])
    torn = b'{"v":1,"at":"2030-01-01","rows":[{"table":"execu'  # an append cut by a crash
    spool.path.write_bytes(spool.path.read_bytes() + torn)
    orphan = run(2)
    orphan.job_id = "0" * 32  # no such job: the foreign key refuses it
    nul = run(3, prompt="a\x00b")
    last = run(4)
    await spool.aappend([[orphan], [nul], [last]])
    assert spool.depth().entries == 5

    assert await spool.replay(db) == 5
    assert sorted(await stored_ids(db)) == sorted([first.id, nul.id, last.id])
    rejected = [json.loads(line) for line in spool.rejected_path.read_bytes().splitlines()]
    assert len(rejected) == 2 and spool.rejected == 2
    assert "unreadable" in rejected[0]["reason"]
    assert orphan.id in rejected[1]["entry"]
    async with db.session() as session:
        stored = await Executions(session).get(nul.id)
        assert stored is not None
        if db.engine().dialect.name == "postgresql":
            assert stored.prompt == "a\\u0000b" and stored.text_escaped
        else:
            assert stored.prompt == "a\x00b"
    assert spool.depth() == SpoolDepth(0, 0)


async def test_two_replayers_of_one_spool_write_each_row_once(
    db: Database, tmp_path: Path, db_url: str
) -> None:
    """Processes sharing a spool directory (`serve --workers N`): one replays at a time."""
    first = RowSpool(tmp_path, db_url, max_bytes=1 << 22)
    second = RowSpool(tmp_path, db_url, max_bytes=1 << 22)
    rows = [run(i) for i in range(200)]
    await first.aappend([[row] for row in rows[:100]])
    await second.aappend([[row] for row in rows[100:]])
    assert first.depth().entries == second.depth().entries == 200

    counts = await asyncio.gather(first.replay(db, batch=10), second.replay(db, batch=10))
    counts_again = await asyncio.gather(first.replay(db), second.replay(db))
    assert sum(counts) + sum(counts_again) == 200
    assert await inserted(db) == [r.id for r in rows]
    assert first.depth() == second.depth() == SpoolDepth(0, 0)


async def test_group_commit_spools_rows_when_the_database_does_not_answer(
    db: Database, tmp_path: Path, db_url: str
) -> None:
    """Writes to a database that refuses connections: every caller gets its id at once
    (from the spool); they reach the database when the spool is replayed there."""
    down = Database(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/gone")
    spool = RowSpool(tmp_path, db_url, max_bytes=1 << 20)

    async def write(rows: object) -> None:
        async with down.session() as session:
            await Executions(session).add_all(rows)  # type: ignore[arg-type]

    committer = GroupCommit(write, spool)
    rows = [run(i) for i in range(20)]
    ids = await asyncio.gather(*(committer.add(row) for row in rows))
    assert list(ids) == [r.id for r in rows]
    assert spool.depth().entries == 20
    full = GroupCommit(write, RowSpool(tmp_path / "small", db_url, max_bytes=10))
    with pytest.raises(SpoolFull):
        await full.add(run(99))
    without = GroupCommit(write)
    with pytest.raises(OSError):  # no spool: the failure is the caller's, as before
        await without.add(run(98))

    assert await spool.replay(db) == 20
    assert sorted(await stored_ids(db)) == sorted(ids)
    await down.dispose()


async def test_an_outage_is_told_from_a_refused_statement(db: Database) -> None:
    """Real failures: no server on the port is an outage; a duplicate key, a missing file
    are not."""
    down = Database(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/gone")
    with pytest.raises(Exception) as no_server:
        await down.ping()
    assert is_outage(no_server.value), repr(no_server.value)
    await down.dispose()
    row = run(1)
    async with db.session() as session:
        await Executions(session).add(row)
    again = run(2)
    again.id = row.id
    with pytest.raises(Exception) as duplicate:
        async with db.session() as session:
            await Executions(session).add(again)
    assert not is_outage(duplicate.value), repr(duplicate.value)
    assert not is_outage(FileNotFoundError(2, "No such file or directory", "/spool"))
    assert not is_outage(PermissionError(13, "Permission denied", "/spool"))
    assert is_outage(SpoolFull("full"))
