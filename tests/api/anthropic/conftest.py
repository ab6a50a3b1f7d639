"""A gateway with keys in front of an emulator, on SQLite or PostgreSQL, and the official
`anthropic` SDK pointed at it."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from app.main import create_app
from tests.api.conftest import gateway_settings
from tests.support.databases import fresh_pg_database
from tests.support.servers import running_emulator, serving_in_thread

MODELS = ("llama3.1:8b", "qwen3:0.6b", "qwen2.5:0.5b")
"""llama3.1:8b cannot think, qwen3:0.6b can; the user key may not use qwen2.5:0.5b."""
ALLOWED = ["llama3.1:8b", "qwen3:0.6b"]


@dataclass
class Gateway:
    url: str
    admin: str
    """An admin key."""
    user: str
    """A user key (named `coder`) that may use `ALLOWED` only."""

    def client(self, key: str | None = None, **options: Any) -> anthropic.Anthropic:
        """The SDK with a key as `x-api-key` (`ANTHROPIC_API_KEY`'s way)."""
        return anthropic.Anthropic(
            base_url=self.url, api_key=key or self.user, max_retries=0, **options
        )

    def stored(self, **query: Any) -> list[dict[str, Any]]:
        reply = httpx.get(
            f"{self.url}/gateway/results",
            params={"limit": 500, **query},
            headers={"Authorization": f"Bearer {self.admin}"},
            timeout=10,
        )
        reply.raise_for_status()
        items: list[dict[str, Any]] = reply.json()["items"]
        return items


@pytest.fixture(scope="module")
def emulators() -> Iterator[str]:
    with running_emulator(models=MODELS) as url:
        yield url


@pytest.fixture
def emulator(emulators: str) -> str:
    """The module's emulator, reset (faults, delays, caches) for each test."""
    httpx.post(f"{emulators}/_emulator/reset", timeout=5).raise_for_status()
    return emulators


@contextlib.contextmanager
def database(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "postgresql":
        with fresh_pg_database() as url:
            yield url
    else:
        yield f"sqlite+aiosqlite:///{tmp_path}/gateway.db"


def keyed_gateway(backends: list[str], database_url: str, tmp_path: Path, **extra: Any) -> Any:
    """A gateway with an admin key and a user key; yields a `Gateway`."""

    @contextlib.contextmanager
    def serving() -> Iterator[Gateway]:
        admin = "ogw_" + secrets.token_urlsafe(32)
        settings = gateway_settings(
            backends, tmp_path, database_url=database_url, admin_key=admin,
            key_cache_seconds=0, **extra,
        )  # fmt: skip
        with serving_in_thread(create_app(settings)) as url:
            created = httpx.post(
                f"{url}/gateway/keys",
                json={"name": "coder", "scope": "user", "models": ALLOWED},
                headers={"Authorization": f"Bearer {admin}"},
                timeout=10,
            )
            assert created.status_code == 201, created.text
            yield Gateway(url, admin, created.json()["key"])

    return serving()


@pytest.fixture(params=["sqlite", "postgresql"])
def gateway(request: pytest.FixtureRequest, emulator: str, tmp_path: Path) -> Iterator[Gateway]:
    """A keyed gateway in front of the emulator, on each database in turn."""
    with (
        database(request.param, tmp_path) as database_url,
        keyed_gateway([emulator], database_url, tmp_path) as served,
    ):
        yield served


@pytest.fixture
def sqlite_gateway(emulator: str, tmp_path: Path) -> Iterator[Gateway]:
    with keyed_gateway([emulator], f"sqlite+aiosqlite:///{tmp_path}/g.db", tmp_path) as served:
        yield served
