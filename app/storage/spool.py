"""The spool: results kept on local disk while the database does not answer, and written
to it, in order and each exactly once, when it answers again.

When writing a run (or a report with its runs) fails because the database does not
answer (`app.storage.outage`), its rows go to the spool instead: one JSON line per
entry (the rows one transaction would have written, ids included), appended, flushed and
fsynced before the caller is told the id. `replay` writes the entries to the database
oldest first, each row inserted only if no row with its key exists, then records how far
it got; a crash between the two (or two replayers) writes nothing twice.

Files, in `<spool dir>/<database key>/` (a key per database URL, so one directory can
serve several databases and an entry never reaches another database):

- `rows.jsonl`: the entries, appended; emptied once all of them are written.
- `replayed`: `{"generation": g, "offset": n}`: the first `n` bytes are written; `g`
  counts the emptyings, so readers can tell a new file from an old one.
- `rejected.jsonl`: entries the database refused for good (not an outage: a constraint,
  a value it will not take even escaped), kept for an operator, with the reason.
- `lock` (appends, emptying) and `replay.lock` (one replayer at a time), taken with
  `flock`, so the processes of `serve --workers N` and replicas on one host may share a
  directory.

`max_bytes` bounds `rows.jsonl`: an entry that would make it larger is refused
(`SpoolFull`), and so is one the disk will not take.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.storage.db import Database, masked
from app.storage.escaping import escape_row
from app.storage.outage import SpoolFull, is_outage
from app.storage.tables import Base, Batch, BenchmarkReport, Comparison, Execution
from app.storage.usage_ledger import UsageTotals, charge_totals

__all__ = ["RowSpool", "SpoolDepth"]

logger = logging.getLogger(__name__)

FORMAT = 1
TABLES: dict[str, type[Base]] = {
    cls.__tablename__: cls for cls in (Batch, BenchmarkReport, Comparison, Execution)
}
"""What may be spooled: runs and the reports they belong to."""


@dataclass(frozen=True)
class SpoolDepth:
    entries: int
    """Entries waiting to be written."""
    bytes: int
    """Their size in the spool file."""


def encode_rows(rows: Sequence[Base]) -> bytes:
    """One entry: a JSON line (ASCII: every other character as its JSON escape)."""
    records = []
    for row in rows:
        state = inspect(row)
        values: dict[str, Any] = {}
        for attr in state.mapper.column_attrs:
            if attr.key not in state.dict:
                continue  # unset: the column's default applies
            value = state.dict[attr.key]
            values[attr.key] = value.isoformat() if isinstance(value, datetime) else value
        records.append({"table": row.__tablename__, "values": values})
    entry = {"v": FORMAT, "at": datetime.now(UTC).isoformat(), "rows": records}
    return json.dumps(entry, separators=(",", ":")).encode("ascii") + b"\n"


def decode_rows(line: bytes) -> list[Base]:
    """The rows of one entry, as ORM objects (not attached to any session)."""
    entry = json.loads(line)
    if entry.get("v") != FORMAT:
        raise ValueError(f"unknown spool entry format {entry.get('v')!r}")
    rows = []
    for record in entry["rows"]:
        cls = TABLES[record["table"]]
        columns = {a.key: a.columns[0] for a in inspect(cls).column_attrs}
        values = {}
        for key, value in record["values"].items():
            column_type = columns[key].type
            if isinstance(getattr(column_type, "impl", column_type), DateTime) and isinstance(
                value, str
            ):
                value = datetime.fromisoformat(value)
            values[key] = value
        rows.append(cls(**values))
    return rows


async def insert_if_absent(session: AsyncSession, rows: Sequence[Base]) -> None:
    """Insert each row unless a row with its key (or another unique value) exists; the
    runs inserted (and only those: a run replayed twice is charged once) are charged to
    the usage ledger in the same transaction."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    inserted = UsageTotals()
    for row in rows:
        state = inspect(row)
        values = {
            attr.columns[0].name: state.dict[attr.key]
            for attr in state.mapper.column_attrs
            if attr.key in state.dict
        }
        table = Base.metadata.tables[row.__tablename__]
        statement = insert(table).values(values).on_conflict_do_nothing()
        if isinstance(row, Execution):
            result = await session.execute(statement.returning(table.c.id))
            if result.first() is not None:
                inserted.add_run(row)
        else:
            await session.execute(statement)
    await charge_totals(session, inserted)


def database_key(database_url: str) -> str:
    """The spool's subdirectory for a database: a digest of its URL (without password)."""
    return hashlib.sha256(masked(database_url).encode()).hexdigest()[:16]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RowSpool:
    """The spool of one database in one directory (see the module doc)."""

    def __init__(self, directory: str | Path, database_url: str, max_bytes: int) -> None:
        self.dir = Path(directory) / database_key(database_url)
        self.max_bytes = max_bytes
        self.path = self.dir / "rows.jsonl"
        self.position_path = self.dir / "replayed"
        self.rejected_path = self.dir / "rejected.jsonl"
        self._lock = threading.Lock()
        self._counted = (0, 0, 0, 0)
        """(generation, start, end, entries): the entries counted in [start, end)."""
        self.spooled = 0
        """Entries this process appended."""
        self.replayed = 0
        """Entries this process wrote to the database from the spool."""
        self.rejected = 0
        """Entries this process set aside because the database refused them for good."""

    def __repr__(self) -> str:
        return f"RowSpool({str(self.dir)!r})"

    def check(self) -> None:
        """Make sure the spool can be written (its directory made, its file opened for
        appending); `OSError` if not. A spool of 0 bytes is never written."""
        if self.max_bytes <= 0:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab"):
            pass

    # -- locks and positions -----------------------------------------------------------

    @contextlib.contextmanager
    def _flock(self, name: str, *, wait: bool = True) -> Iterator[bool]:
        """Hold `<dir>/<name>` exclusively; with `wait=False`, yield False if another holds it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / name, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # releases the lock

    def _position(self) -> tuple[int, int]:
        """(generation, offset) of what has been written to the database."""
        try:
            data = json.loads(self.position_path.read_bytes())
            return int(data["generation"]), int(data["offset"])
        except FileNotFoundError:
            return 0, 0
        except (ValueError, KeyError, TypeError):
            logger.error("the spool's position file %s is unreadable: replaying from the start",
                         self.position_path)  # fmt: skip
            return 0, 0

    def _set_position(self, generation: int, offset: int) -> None:
        """Record the position durably (a new file renamed over the old, both fsynced)."""
        tmp = self.position_path.with_suffix(".tmp")
        with open(tmp, "wb") as out:
            out.write(json.dumps({"generation": generation, "offset": offset}).encode())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.position_path)
        _fsync_dir(self.dir)

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    # -- appending ---------------------------------------------------------------------

    def append(self, entries: Sequence[Sequence[Base]]) -> None:
        """Append entries (each the rows of one transaction) durably, or none of them.

        `SpoolFull` when they would take the file over `max_bytes`, or the disk refuses.
        """
        data = b"".join(encode_rows(rows) for rows in entries)
        with self._lock, self._flock("lock"):
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                size = os.fstat(fd).st_size
                prefix = self._torn_tail(fd, size)
                if size + len(prefix) + len(data) > self.max_bytes:
                    raise SpoolFull(
                        f"the database does not answer and the spool is full "
                        f"({size} of GATEWAY_SPOOL_MAX_BYTES={self.max_bytes} bytes used)"
                    )
                try:
                    _write_all(fd, prefix + data)
                    os.fsync(fd)
                except OSError as exc:
                    os.ftruncate(fd, size)  # no partial entry is left behind
                    raise SpoolFull(
                        f"the database does not answer and the spool cannot be written: {exc}"
                    ) from exc
            finally:
                os.close(fd)
            if size == 0:
                _fsync_dir(self.dir)  # the file may be new: its name must last too
        self.spooled += len(entries)

    @staticmethod
    def _torn_tail(fd: int, size: int) -> bytes:
        """A newline when the file ends inside a line (an append cut short by a crash), so
        the next entry starts on a line of its own; the torn line is set aside on replay."""
        if size == 0:
            return b""
        return b"" if os.pread(fd, 1, size - 1) == b"\n" else b"\n"

    async def aappend(self, entries: Sequence[Sequence[Base]]) -> None:
        """`append` off the event loop (it waits for the disk)."""
        await asyncio.to_thread(self.append, entries)

    # -- depth -------------------------------------------------------------------------

    def has_pending(self) -> bool:
        """Whether any entry waits to be written (cheap: two small reads)."""
        return self._size() > self._position()[1]

    def depth(self) -> SpoolDepth:
        """Entries waiting and their bytes. Counted incrementally: only what was appended
        or written since the last call is read."""
        with self._lock:
            generation, offset = self._position()
            size = self._size()
            offset = min(offset, size)
            counted_gen, start, end, entries = self._counted
            if counted_gen != generation or offset < start or size < end:
                entries = self._newlines(offset, size)
            else:
                entries += self._newlines(end, size) - self._newlines(start, offset)
            self._counted = (generation, offset, size, entries)
            return SpoolDepth(entries=entries, bytes=size - offset)

    def has_room(self) -> bool:
        """Whether an entry could be spooled now: the directory is writable and the file
        under its bound (an entry may still be too big for what is left)."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError:
            return False
        return os.access(self.dir, os.W_OK) and self._size() < self.max_bytes

    async def adepth(self) -> SpoolDepth:
        return await asyncio.to_thread(self.depth)

    def _newlines(self, start: int, end: int) -> int:
        if end <= start:
            return 0
        count = 0
        with contextlib.suppress(FileNotFoundError), open(self.path, "rb") as src:
            src.seek(start)
            left = end - start
            while left > 0:
                chunk = src.read(min(left, 1 << 20))
                if not chunk:
                    break
                count += chunk.count(b"\n")
                left -= len(chunk)
        return count

    # -- replay ------------------------------------------------------------------------

    def _read(self, limit: int) -> tuple[int, int, list[bytes]]:
        """Up to `limit` whole lines after the written offset: (generation, end, lines)."""
        generation, offset = self._position()
        lines: list[bytes] = []
        end = offset
        with contextlib.suppress(FileNotFoundError), open(self.path, "rb") as src:
            if offset > os.fstat(src.fileno()).st_size:
                offset = end = 0  # the file was emptied by hand: start over
            src.seek(offset)
            while len(lines) < limit:
                line = src.readline()
                if not line.endswith(b"\n"):
                    break  # the end, or a line still being written
                lines.append(line)
                end += len(line)
        return generation, end, lines

    def _empty_if_written(self, generation: int, end: int) -> None:
        """Empty the file when everything in it is written (and nothing was appended
        since): first the position (a crash then only means writing them again), then
        the file."""
        with self._lock, self._flock("lock"):
            if self._size() != end or self._position() != (generation, end):
                return
            self._set_position(generation + 1, 0)
            with open(self.path, "r+b") as out:
                out.truncate(0)
                os.fsync(out.fileno())

    def _reject(self, line: bytes, reason: str) -> None:
        record = {"reason": reason[:2000], "entry": line.decode("ascii", "replace").rstrip("\n")}
        with open(self.rejected_path, "ab") as out:
            out.write(json.dumps(record).encode("ascii") + b"\n")
            out.flush()
            os.fsync(out.fileno())
        self.rejected += 1

    async def replay(self, db: Database, *, batch: int = 200) -> int:
        """Write every waiting entry to `db`, oldest first; how many were written.

        Raises what the database raised when it does not answer (the entries not yet
        written stay, for the next call). Does nothing while another replayer (of any
        process) is at it.
        """
        written = 0
        with self._flock("replay.lock", wait=False) as mine:
            if not mine:
                return 0
            while True:
                generation, end, lines = await asyncio.to_thread(self._read, batch)
                if not lines:
                    await asyncio.to_thread(self._empty_if_written, generation, end)
                    return written
                await self._write(db, lines)
                await asyncio.to_thread(self._set_position, generation, end)
                written += len(lines)
                self.replayed += len(lines)

    async def _write(self, db: Database, lines: Sequence[bytes]) -> None:
        """All entries in one transaction; when the database refuses that, each on its own,
        escaped if it must be (`app.storage.escaping`), set aside if even that fails."""
        entries: list[tuple[bytes, list[Base]]] = []
        for line in lines:
            try:
                entries.append((line, decode_rows(line)))
            except (ValueError, KeyError, TypeError) as exc:
                logger.error("a spool entry cannot be read (set aside): %r", exc)
                await asyncio.to_thread(self._reject, line, f"unreadable: {exc!r}")
        try:
            async with db.session() as session:
                for _, rows in entries:
                    await insert_if_absent(session, rows)
            return
        except Exception as exc:
            if is_outage(exc):
                raise
        for line, rows in entries:
            await self._write_alone(db, line, rows)

    async def _write_alone(self, db: Database, line: bytes, rows: list[Base]) -> None:
        for attempt in range(2):
            try:
                async with db.session() as session:
                    await insert_if_absent(session, rows)
                return
            except Exception as exc:
                if is_outage(exc):
                    raise
                escaped = attempt == 0 and any([escape_row(row) for row in rows])
                if not escaped:
                    logger.error("the database refused a spooled entry (set aside in %s): %r",
                                 self.rejected_path, exc)  # fmt: skip
                    await asyncio.to_thread(self._reject, line, repr(exc))
                    return

    async def replay_forever(self, db: Database, interval: float = 1.0) -> None:
        """Replay whenever entries wait (at once, then every `interval` seconds) until
        cancelled; an outage is waited out quietly, other failures are logged."""
        outage_logged = False
        while True:
            try:
                if await asyncio.to_thread(self.has_pending):
                    written = await self.replay(db)
                    if written:
                        logger.info("wrote %d spooled entries to the database", written)
                outage_logged = False
            except Exception as exc:
                if not is_outage(exc):
                    logger.exception("replaying the spool failed")
                elif not outage_logged:
                    logger.warning("the spool waits for the database: %r", exc)
                    outage_logged = True
            await asyncio.sleep(interval)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
