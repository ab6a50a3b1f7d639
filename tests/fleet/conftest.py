"""A fresh database per test, on SQLite and PostgreSQL (the fixtures of tests/storage)."""

from tests.storage.conftest import db_url, empty_db_url

__all__ = ["db_url", "empty_db_url"]
