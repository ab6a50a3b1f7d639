"""A gateway as an attacker meets it: auth required, an admin key and user keys, on SQLite
and on PostgreSQL, in front of an emulator of its own.

Every request a test sends goes through `Deployment` (an httpx client, or `raw` for bytes
httpx would not send), which counts them; when the deployment stops, its audit table must
hold exactly one row per request counted (probes and docs, which are not audited, aside).
The counts are printed at the end of the run.
"""

from __future__ import annotations

import asyncio
import http.client
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app.access import KeyStore
from app.api.edge.audit_log import UNAUDITED
from app.main import create_app
from tests.api.conftest import gateway_settings
from tests.support.databases import fresh_pg_database
from tests.support.servers import running_emulator, serving_in_thread

MODELS = ("llama3.1:8b", "qwen2.5:0.5b", "nomic-embed-text:latest")
AUDIT_COUNTS: list[str] = []


@dataclass
class Deployment:
    url: str
    emulator: str
    database_url: str
    keys: dict[str, str]
    """admin; alice and bob (user keys; bob may use only qwen*); auditor (admin, qwen* only)."""
    sent: int = 0
    clients: list[httpx.Client] = field(default_factory=list)

    def _count(self, request: httpx.Request) -> None:
        if request.url.path not in UNAUDITED:
            self.sent += 1

    def client(self, key: str | None = None) -> httpx.Client:
        """A client of the gateway (with `key`'s bearer token), counted."""
        headers = {"Authorization": f"Bearer {self.keys[key]}"} if key else {}
        client = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=30,
            event_hooks={"request": [self._count]},
        )
        self.clients.append(client)
        return client

    def raw(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """A request with the path and body sent byte for byte (no normalising), counted."""
        if path.split("?")[0] not in UNAUDITED:
            self.sent += 1
        parts = urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
        sent_headers = dict(headers or {})
        if key:
            sent_headers["Authorization"] = f"Bearer {self.keys[key]}"
        try:
            conn.request(method, path, body=body, headers=sent_headers)
            reply = conn.getresponse()
            return reply.status, reply.read()
        finally:
            conn.close()


def _create_keys(database_url: str) -> dict[str, str]:
    async def create() -> dict[str, str]:
        store = KeyStore(database_url)
        try:
            return {
                "admin": (await store.acreate("root", "admin")).key,
                "alice": (await store.acreate("alice", "user")).key,
                "bob": (await store.acreate("bob", "user", models=["qwen*"])).key,
                "auditor": (await store.acreate("auditor", "admin", models=["qwen*"])).key,
            }
        finally:
            await store.aclose()

    return asyncio.run(create())


def _audit_rows(database_url: str) -> int:
    """The audit table's rows, counted with SQL (not through the code under test)."""

    async def count() -> int:
        engine = create_async_engine(database_url)
        try:
            async with engine.connect() as conn:
                return int(
                    (await conn.execute(text("SELECT count(*) FROM audit_log"))).scalar_one()
                )
        finally:
            await engine.dispose()

    return asyncio.run(count())


@pytest.fixture(scope="module")
def security_emulator() -> Iterator[str]:
    with running_emulator(models=MODELS) as url:
        yield url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def deployment(
    request: pytest.FixtureRequest, security_emulator: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """A gateway with auth required and four keys; on teardown, one audit row per request."""
    tmp: Path = tmp_path_factory.mktemp("security")
    with fresh_pg_database() if request.param == "postgresql" else _sqlite(tmp) as database_url:
        from app.storage.migrations import upgrade

        upgrade(database_url)
        keys = _create_keys(database_url)
        settings = gateway_settings(
            [security_emulator],
            tmp,
            database_url=database_url,
            require_auth=True,
            key_cache_seconds=0,
        )
        deployment = Deployment(
            url="", emulator=security_emulator, database_url=database_url, keys=keys
        )
        with serving_in_thread(create_app(settings)) as url:
            deployment.url = url
            yield deployment
            for client in deployment.clients:
                client.close()
        rows = _audit_rows(database_url)
        module = request.module.__name__.rsplit(".", 1)[-1]
        AUDIT_COUNTS.append(
            f"{module} on {request.param}: {deployment.sent} requests, {rows} audit rows"
        )
        assert rows == deployment.sent, "the audit log must hold one row per request"


class _sqlite:
    def __init__(self, tmp: Path) -> None:
        self.url = f"sqlite+aiosqlite:///{tmp}/gateway.db"

    def __enter__(self) -> str:
        return self.url

    def __exit__(self, *exc: Any) -> None:
        return None


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if AUDIT_COUNTS:
        terminalreporter.section("security suite: audit rows")
        for line in AUDIT_COUNTS:
            terminalreporter.write_line(line)
