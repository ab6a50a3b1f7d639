"""The backend registry: backends added or removed through one replica reach the others
within 5 s and outlive restarts. Two real `serve` processes on one database (a fresh
PostgreSQL database, or one SQLite file), in front of emulators on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.main import build_services
from app.storage.migrations import ensure_schema
from tests.api.conftest import gateway_settings
from tests.support.databases import fresh_pg_database
from tests.support.replicas import wait_for
from tests.support.servers import free_port, running_emulator, running_process

ONLY_ON_TWO = "smollm2:135m"
"""A model only the backend `two` has: a request for it succeeds only where `two` is."""

SHARED_WITHIN_S = 5.0


@contextlib.contextmanager
def database(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    else:
        with fresh_pg_database() as url:
            yield url


@contextlib.contextmanager
def two_replicas(backends: str, database_url: str) -> Iterator[tuple[str, str]]:
    """Two `ollama-gateway serve` processes with the same settings; yields their URLs."""
    env = {
        "GATEWAY_BACKENDS": backends,
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_REQUEST_TIMEOUT": "30",
        "GATEWAY_HEALTH_TIMEOUT": "1",
        "GATEWAY_LOG_LEVEL": "warning",
    }
    urls = []
    with contextlib.ExitStack() as stack:
        for _ in range(2):  # one after the other: the first creates the schema
            port = free_port()
            args = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
            url = f"http://127.0.0.1:{port}"
            stack.enter_context(running_process(args, url + "/healthz", env=env))
            urls.append(url)
        yield urls[0], urls[1]


def sources(url: str) -> dict[str, str]:
    reply = httpx.get(f"{url}/gateway/backends", timeout=10)
    assert reply.status_code == 200, reply.text
    return {backend["name"]: backend["source"] for backend in reply.json()}


def chat_status(url: str, model: str = ONLY_ON_TWO) -> int:
    body = {"model": model, "stream": False, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(f"{url}/api/chat", json=body, timeout=30).status_code


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_a_backend_added_on_one_replica_is_used_by_the_other_and_outlives_restarts(
    kind: str, tmp_path: Path
) -> None:
    with (
        database(kind, tmp_path) as db,
        running_emulator(models=("llama3.1:8b",)) as first,
        running_emulator(models=(ONLY_ON_TWO,)) as second,
    ):
        backends = f"one={first}"
        with two_replicas(backends, db) as (a, b):
            assert chat_status(b) == 404
            added = httpx.post(
                f"{a}/gateway/backends", json={"backend": f"two={second};max=2"}, timeout=10
            )
            assert added.status_code == 201, added.text
            assert added.json()["source"] == "api" and added.json()["max_concurrency"] == 2
            assert chat_status(a) == 200, "the replica that added it uses it at once"
            wait_for(lambda: chat_status(b) == 200, SHARED_WITHIN_S, "B uses the added backend")
            assert sources(b) == {"one": "settings", "two": "api"}

        with two_replicas(backends, db) as (a, b):
            for url in (a, b):
                assert sources(url) == {"one": "settings", "two": "api"}
                assert chat_status(url) == 200
            assert httpx.delete(f"{b}/gateway/backends/two", timeout=10).status_code == 204
            assert sources(b) == {"one": "settings"} and chat_status(b) == 404
            wait_for(lambda: "two" not in sources(a), SHARED_WITHIN_S, "A drops the backend")
            assert chat_status(a) == 404

        with two_replicas(backends, db) as (a, b):
            for url in (a, b):
                assert sources(url) == {"one": "settings"}
                assert chat_status(url) == 404


def test_removing_a_start_up_backend_is_shared_and_remembered_until_added_again(
    tmp_path: Path,
) -> None:
    with (
        database("postgresql", tmp_path) as db,
        running_emulator(models=("llama3.1:8b",)) as first,
        running_emulator(models=(ONLY_ON_TWO,)) as second,
    ):
        backends = f"one={first},two={second}"
        with two_replicas(backends, db) as (a, b):
            assert sources(b) == {"one": "settings", "two": "settings"}
            assert chat_status(b) == 200
            assert httpx.delete(f"{a}/gateway/backends/two", timeout=10).status_code == 204
            wait_for(lambda: chat_status(b) == 404, SHARED_WITHIN_S, "B drops `two`")
            assert sources(b) == {"one": "settings"}
            last = httpx.delete(f"{b}/gateway/backends/one", timeout=10)
            assert last.status_code == 409 and "last one" in last.json()["detail"]

        with two_replicas(backends, db) as (a, b):
            # GATEWAY_BACKENDS still lists `two`; the removal is remembered.
            for url in (a, b):
                assert sources(url) == {"one": "settings"} and chat_status(url) == 404
            added = httpx.post(f"{b}/gateway/backends", json={"backend": f"two={second}"})
            assert added.status_code == 201 and added.json()["source"] == "api"
            wait_for(lambda: chat_status(a) == 200, SHARED_WITHIN_S, "A takes `two` up again")
            assert sources(a) == {"one": "settings", "two": "api"}


async def test_the_worker_follows_the_registry_through_pool_watch(tmp_path: Path) -> None:
    """`ollama-gateway worker` builds its services with `build_services` and runs
    `manager.pool.watch`, nothing else (its `fleet` hangs the registry on the pool): that is enough to follow the registry."""
    with running_emulator(models=(ONLY_ON_TWO,)) as second:
        settings = gateway_settings(["one=http://127.0.0.1:9"], tmp_path, health_interval=60)
        ensure_schema(settings.database_url)
        replica, worker = build_services(settings), build_services(settings)
        watcher = asyncio.create_task(worker.manager.pool.watch(settings.health_interval))
        try:
            await replica.fleet.aadd_backend(f"two={second}")
            for _ in range(int(SHARED_WITHIN_S / 0.1)):
                if [s.spec.name for s in worker.manager.pool.states] == ["one", "two"]:
                    break
                await asyncio.sleep(0.1)
            assert [s.source for s in worker.manager.pool.states] == ["settings", "api"]
            assert (await worker.fleet.amodel_locations())[ONLY_ON_TWO] == ["two"]

            await replica.fleet.aremove_backend("one")
            for _ in range(int(SHARED_WITHIN_S / 0.1)):
                if [s.spec.name for s in worker.manager.pool.states] == ["two"]:
                    break
                await asyncio.sleep(0.1)
            assert [s.spec.name for s in worker.manager.pool.states] == ["two"]
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            for services in (replica, worker):
                await services.manager.aclose()
                await services.outputs.aclose()
