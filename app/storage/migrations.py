"""Alembic, driven from code: `ollama-gateway migrate`, the start-up schema check, tests.

Alembic's async env runs its own event loop, so every function here runs it in a worker
thread: they work from plain scripts and from code already inside a running loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from app.storage.db import masked, normalize_url, sqlite_path

T = TypeVar("T")


_SCHEMA_LOCK = threading.RLock()
"""Serialises schema changes made by this process (two managers finding one new database
at once would otherwise both try to create it); PostgreSQL also locks across processes
(see migrations/env.py)."""


_FILES_LOCKED: set[str] = set()
"""SQLite files whose migration lock this process holds (guarded by _SCHEMA_LOCK)."""


class SchemaOutOfDate(RuntimeError):
    """The database's schema is older (or other) than this version of the gateway needs."""


def migrations_dir() -> Path:
    """`migrations/` of the source tree, or of the working directory (container images)."""
    override = os.environ.get("GATEWAY_MIGRATIONS_DIR")
    candidates = [Path(override)] if override else []
    candidates += [Path(__file__).resolve().parents[2] / "migrations", Path.cwd() / "migrations"]
    for candidate in candidates:
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("cannot find the migrations directory (set GATEWAY_MIGRATIONS_DIR)")


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", normalize_url(database_url).replace("%", "%%"))
    return config


@contextlib.contextmanager
def _migration_lock(database_url: str) -> Iterator[None]:
    """Hold the schema lock of this process, and for a SQLite file an exclusive lock on
    `<file>.migrate-lock` (where the OS has `fcntl`), so concurrent upgrades of one database
    from several processes run one after the other. PostgreSQL locks in migrations/env.py.
    """
    with _SCHEMA_LOCK:
        path = sqlite_path(database_url)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: in-process lock only
            fcntl = None  # type: ignore[assignment]
        if path is None or fcntl is None or str(path) in _FILES_LOCKED:
            yield  # re-entered: this thread holds the file lock already
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{path}.migrate-lock", "a+b") as lock_file:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
            _FILES_LOCKED.add(str(path))
            try:
                yield
            finally:
                _FILES_LOCKED.discard(str(path))
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def _in_thread(fn: Callable[[], T]) -> T:
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn).result()


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def upgrade(database_url: str, revision: str = "head") -> None:
    """Upgrade to `revision` (default the newest); a SQLite file's directory is created."""
    with _migration_lock(database_url):
        _in_thread(lambda: command.upgrade(alembic_config(database_url), revision))


def downgrade(database_url: str, revision: str) -> None:
    """Downgrade to `revision` ("base" removes every table of the gateway)."""
    with _migration_lock(database_url):
        _in_thread(lambda: command.downgrade(alembic_config(database_url), revision))


def _inspect(database_url: str) -> tuple[str | None, set[str]]:
    async def read() -> tuple[str | None, set[str]]:
        engine = create_async_engine(normalize_url(database_url), poolclass=NullPool)
        try:
            async with engine.connect() as conn:

                def sync(connection: object) -> tuple[str | None, set[str]]:
                    ctx = MigrationContext.configure(connection)  # type: ignore[arg-type]
                    tables = set(inspect(connection).get_table_names())
                    return ctx.get_current_revision(), tables

                return await conn.run_sync(sync)
        finally:
            await engine.dispose()

    return _in_thread(lambda: asyncio.run(read()))


def current_revision(database_url: str) -> str | None:
    """The database's revision; None for an empty (or, for SQLite, missing) database."""
    path = sqlite_path(database_url)
    if path is not None and not path.exists():
        return None
    return _inspect(database_url)[0]


def is_up_to_date(database_url: str) -> bool:
    """True when the database is at the newest revision this gateway knows."""
    return current_revision(database_url) == head_revision()


def ensure_schema(database_url: str, *, upgrade_old: bool = False) -> str:
    """Make sure the schema is at head; says what it did.

    A new, empty database is created at head. An older schema is upgraded only with
    `upgrade_old`; otherwise `SchemaOutOfDate` says to run `ollama-gateway migrate`.
    """
    with _migration_lock(database_url):
        return _ensure_schema(database_url, upgrade_old=upgrade_old)


def _ensure_schema(database_url: str, *, upgrade_old: bool) -> str:
    path = sqlite_path(database_url)
    if path is not None and not path.exists():
        upgrade(database_url)
        return "created"
    current, tables = _inspect(database_url)
    head = head_revision()
    if current == head:
        return "up to date"
    if current is None and not (tables - {"alembic_version"}):
        upgrade(database_url)
        return "created"
    if upgrade_old:
        upgrade(database_url)
        return "upgraded"
    raise SchemaOutOfDate(
        f"the database {masked(database_url)} is at schema revision {current or 'none'}, "
        f"this gateway needs {head}: run `ollama-gateway migrate` "
        "(or set GATEWAY_AUTO_MIGRATE=true)"
    )
