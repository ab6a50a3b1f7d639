"""Alembic, driven from code: `ollama-gateway migrate`, the start-up schema check, tests.

Alembic's async env runs its own event loop, so every function here runs it in a worker
thread: they work from plain scripts and from code already inside a running loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Callable
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


def _in_thread(fn: Callable[[], T]) -> T:
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn).result()


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def upgrade(database_url: str, revision: str = "head") -> None:
    """Upgrade to `revision` (default the newest); a SQLite file's directory is created."""
    path = sqlite_path(database_url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    with _SCHEMA_LOCK:
        _in_thread(lambda: command.upgrade(alembic_config(database_url), revision))


def downgrade(database_url: str, revision: str) -> None:
    """Downgrade to `revision` ("base" removes every table of the gateway)."""
    with _SCHEMA_LOCK:
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
    with _SCHEMA_LOCK:
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
