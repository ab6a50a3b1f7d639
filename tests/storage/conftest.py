"""A fresh database per test, on SQLite (a temp file) and on the PostgreSQL at 127.0.0.1:5432."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.databases import fresh_pg_database


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind; PostgreSQL gets its own database, dropped after."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/gateway.db"
        return
    with fresh_pg_database() as url:
        yield url


@pytest.fixture
def db_url(empty_db_url: str) -> str:
    """A database of each kind, upgraded to the newest schema."""
    from app.storage.migrations import upgrade

    upgrade(empty_db_url)
    return empty_db_url
