"""Engines and sessions. An async engine's pool belongs to one event loop, so a `Database`
keeps one engine per running loop: the REST layer's (uvicorn) and the sync API's private
loop each get their own, created on first use there.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.observability import telemetry

SQLITE_BUSY_TIMEOUT_S = 30


def normalize_url(url: str) -> str:
    """Accept the plain forms users write and pick the async driver."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url.removeprefix(prefix)
    return url


def is_sqlite(url: str) -> bool:
    return make_url(normalize_url(url)).get_backend_name() == "sqlite"


def masked(url: str) -> str:
    """The URL without its password, for logs and API answers."""
    return make_url(normalize_url(url)).render_as_string(hide_password=True)


def sqlite_path(url: str) -> Path | None:
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return None if parsed.database == ":memory:" else Path(parsed.database)


def create_engine(url: str) -> AsyncEngine:
    """An async engine; SQLite files get WAL, a busy timeout and foreign keys."""
    url = normalize_url(url)
    if is_sqlite(url):
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, _: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
            cursor.execute("PRAGMA foreign_keys=ON")
            # Switching to WAL takes a lock SQLite does not wait for: a connection opened
            # while another process writes got "database is locked". The mode is the
            # file's, so it is switched once, retried briefly if the file is busy.
            for attempt in range(10):
                try:
                    cursor.execute("PRAGMA journal_mode")
                    if str(cursor.fetchone()[0]).lower() != "wal":
                        cursor.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError:
                    if attempt == 9:
                        raise
                    time.sleep(0.05)  # rare: only a file not yet in WAL, being written
            cursor.close()

        return engine
    return create_async_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


class Database:
    """One database URL; an engine (and session factory) per event loop that uses it."""

    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        self._engines: dict[asyncio.AbstractEventLoop, AsyncEngine] = {}
        self._sessions: dict[asyncio.AbstractEventLoop, async_sessionmaker[AsyncSession]] = {}
        self._lock = threading.Lock()

    def engine(self) -> AsyncEngine:
        loop = asyncio.get_running_loop()
        with self._lock:
            engine = self._engines.get(loop)
            if engine is None:
                for old in [lp for lp in self._engines if lp.is_closed()]:
                    del self._engines[old]
                    self._sessions.pop(old, None)
                engine = self._engines[loop] = create_engine(self.url)
                telemetry.instrument_engine(engine)  # statements traced, when tracing is on
                self._sessions[loop] = async_sessionmaker(engine, expire_on_commit=False)
            return engine

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction, committed when the block ends without error."""
        self.engine()
        factory = self._sessions[asyncio.get_running_loop()]
        async with factory() as session, session.begin():
            yield session

    async def ping(self) -> None:
        """Raise if the database does not answer a trivial query."""
        async with self.session() as session:
            await session.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        """Dispose the calling loop's engine (others are disposed on their own loops)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            engine = self._engines.pop(loop, None)
            self._sessions.pop(loop, None)
        if engine is not None:
            await engine.dispose()
