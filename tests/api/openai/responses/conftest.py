"""A gateway with API keys in front of the shared emulator, on SQLite and on PostgreSQL:
the `openai` SDK, unmodified, as an admin and as two user keys."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from app.main import create_app
from tests.api.conftest import gateway_settings
from tests.support.databases import fresh_pg_database
from tests.support.servers import serving_in_thread

ADMIN_KEY = "ogw_responses_admin_0123456789abcdefghij"
MODEL = "llama3.1:8b"
THINKER = "qwen3:0.6b"


@dataclass
class Gateway:
    url: str
    admin: openai.OpenAI
    user: openai.OpenAI
    """A user key that may use llama3.1:8b and qwen3 models."""
    other: openai.OpenAI
    """Another user key (any model)."""

    def admin_get(self, path: str, **params: Any) -> Any:
        reply = httpx.get(
            f"{self.url}{path}", params=params, timeout=10,
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )  # fmt: skip
        reply.raise_for_status()
        return reply.json()

    def stored_runs(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.admin_get("/gateway/results", limit=200)["items"]
        return items


def sdk(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30)


def create_key(url: str, **body: Any) -> str:
    reply = httpx.post(
        f"{url}/gateway/keys", json=body, timeout=10,
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )  # fmt: skip
    assert reply.status_code == 201, reply.text
    key: str = reply.json()["key"]
    return key


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/gateway.db"
        return
    with fresh_pg_database() as url:
        yield url


@pytest.fixture
def gateway(emulator_url: str, tmp_path: Path, database_url: str) -> Iterator[Gateway]:
    pulled = httpx.post(f"{emulator_url}/api/pull", json={"model": THINKER, "stream": False})
    pulled.raise_for_status()
    settings = gateway_settings(
        [emulator_url], tmp_path, database_url=database_url, admin_key=ADMIN_KEY,
        key_cache_seconds=0,
    )  # fmt: skip
    with serving_in_thread(create_app(settings)) as url:
        user = create_key(url, name="alice", scope="user", models=[MODEL, "qwen3*"])
        other = create_key(url, name="bob", scope="user")
        yield Gateway(url, sdk(url, ADMIN_KEY), sdk(url, user), sdk(url, other))
