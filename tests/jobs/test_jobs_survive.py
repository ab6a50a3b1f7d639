"""Jobs that survive: read and followed from any replica, taken over when their worker is
killed, resumed after a restart, cancelled at once, and owned by their key. Real `serve`
processes on PostgreSQL (procrastinate) and SQLite, in front of a slow emulator."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from app.access import KeyStore
from tests.support.databases import fresh_pg_database
from tests.support.replicas import Replica, replicas, wait_for
from tests.support.servers import running_emulator

MODEL = "llama3.1:8b"


@pytest.fixture(scope="module")
def slow_emulator() -> Iterator[str]:
    """Runs of about half a second (20 ms a token), so a job is still going when killed."""
    with running_emulator(models=(MODEL, "qwen2.5:0.5b"), token_delay_ms=20) as url:
        yield url


def job_of(url: str, job_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    reply = httpx.get(f"{url}/gateway/jobs/{job_id}", headers=headers, timeout=10)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


class Follower:
    """Follows a job's SSE events, reconnecting with Last-Event-ID to whichever replica
    answers; records every progress index it is given."""

    def __init__(self, urls: list[str], job_id: str) -> None:
        self.urls = urls
        self.job_id = job_id
        self.indexes: list[int] = []
        self.last_id: str | None = None
        self.reconnects = 0
        self.done: dict[str, Any] | None = None
        self.kill_after = 5
        self.enough = asyncio.Event()

    async def run(self, deadline: float) -> None:
        turn = 0
        while self.done is None and time.monotonic() < deadline:
            url = self.urls[turn % len(self.urls)]
            turn += 1
            headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
            try:
                async with (
                    httpx.AsyncClient(timeout=httpx.Timeout(30, connect=2)) as client,
                    client.stream(
                        "GET", f"{url}/gateway/jobs/{self.job_id}/events", headers=headers
                    ) as reply,
                ):
                    await self._read(reply)
            except httpx.HTTPError:
                pass
            if self.done is None:
                self.reconnects += 1
                await asyncio.sleep(0.2)

    async def _read(self, reply: httpx.Response) -> None:
        event, data, ident = "message", "", None
        async for line in reply.aiter_lines():
            if line.startswith("id:"):
                ident = line[3:].strip()
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
            elif line == "" and data:
                self.last_id = ident or self.last_id
                if event == "progress":
                    self.indexes.append(int(json.loads(data)["index"]))
                    if len(self.indexes) >= self.kill_after:
                        self.enough.set()
                elif event == "done":
                    self.done = json.loads(data)
                    return
                event, data, ident = "message", "", None


async def pg_rows(database_url: str, query: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


def test_a_job_is_followed_on_any_replica_and_taken_over_when_its_worker_is_killed(
    slow_emulator: str,
) -> None:
    """Two replicas on one PostgreSQL, each with its embedded worker: a 40-prompt batch
    started on A is read and followed on B; the process named in `worker` is SIGKILLed
    after 5 runs; the job still succeeds with 40 results, each prompt stored once, and a
    follower reconnecting with Last-Event-ID saw each index once."""
    with fresh_pg_database() as database_url:
        env = {
            "GATEWAY_BACKENDS": slow_emulator,
            "GATEWAY_DATABASE_URL": database_url,
            "GATEWAY_AUTO_MIGRATE": "true",
            "GATEWAY_JOB_STALLED_SECONDS": "4",
            "GATEWAY_LOG_LEVEL": "warning",
        }
        with replicas(2, env) as (a, b):
            prompts = [f"prompt number {i}" for i in range(40)]
            started = httpx.post(
                f"{a.url}/gateway/batches",
                json={"model": MODEL, "prompts": prompts, "max_concurrent": 2, "background": True},
                timeout=10,
            )
            assert started.status_code == 202, started.text
            job_id = started.json()["id"]
            assert job_of(b.url, job_id)["kind"] == "batch"  # any replica answers

            async def follow_and_kill() -> dict[str, Any]:
                follower = Follower([b.url, a.url], job_id)
                followers.append(follower)
                following = asyncio.create_task(follower.run(time.monotonic() + 90))
                await asyncio.wait_for(follower.enough.wait(), 60)
                running = job_of(b.url, job_id)
                worker = running["worker"]
                assert running["status"] == "running" and worker
                pid = int(worker.rsplit(":", 1)[1])
                victim = next(r for r in (a, b) if r.proc.pid == pid)
                victim.kill()
                survivor = b if victim is a else a
                follower.urls = [survivor.url]
                await asyncio.wait_for(following, 90)
                return job_of(survivor.url, job_id)

            followers: list[Follower] = []
            final = asyncio.run(follow_and_kill())
            follower = followers[0]
        assert final["status"] == "succeeded", final
        assert final["completed"] == 40 and final["attempts"] == 2 and final["batch_id"]
        rows = asyncio.run(
            pg_rows(
                database_url,
                "SELECT prompt, job_index FROM executions WHERE job_id = $1",
                job_id,
            )
        )
        assert sorted(r["job_index"] for r in rows) == list(range(40))
        assert sorted(r["prompt"] for r in rows) == sorted(prompts)  # each prompt once
        assert sorted(follower.indexes) == list(range(40)), follower.indexes  # each once
        linked = asyncio.run(
            pg_rows(
                database_url, "SELECT id FROM executions WHERE batch_id = $1", final["batch_id"]
            )
        )
        assert len(linked) == 40


def test_the_embedded_default_resumes_a_killed_job_at_the_next_start(
    slow_emulator: str, tmp_path: Path
) -> None:
    """`serve` on SQLite, SIGKILLed mid-batch: the next start resumes the job to
    `succeeded`, no prompt stored twice, `attempts` 2."""
    database = tmp_path / "gateway.db"
    env = {
        "GATEWAY_BACKENDS": slow_emulator,
        "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "GATEWAY_LOG_LEVEL": "warning",
    }
    replica = Replica(env).start()
    try:
        prompts = [f"resumed prompt {i}" for i in range(20)]
        started = httpx.post(
            f"{replica.url}/gateway/batches",
            json={"model": MODEL, "prompts": prompts, "max_concurrent": 2, "background": True},
            timeout=10,
        )
        job_id = started.json()["id"]
        wait_for(lambda: job_of(replica.url, job_id)["completed"] >= 4, 30, "4 runs")
        replica.kill()
        with sqlite3.connect(database) as db:
            before = db.execute("SELECT count(*) FROM executions WHERE job_id = ?", (job_id,))
            stored_before = before.fetchone()[0]
        assert 4 <= stored_before < 20
        replica.start()
        final = wait_for(
            lambda: (j := job_of(replica.url, job_id))["status"] == "succeeded" and j, 60, "resume"
        )
    finally:
        replica.stop()
    assert final["attempts"] == 2 and final["completed"] == 20
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT prompt, job_index FROM executions WHERE job_id = ?", (job_id,))
        stored = rows.fetchall()
    assert sorted(i for _, i in stored) == list(range(20))
    assert sorted(p for p, _ in stored) == sorted(prompts)


def test_cancel_stops_new_backend_calls_at_once_and_keeps_what_finished(
    slow_emulator: str, tmp_path: Path
) -> None:
    env = {
        "GATEWAY_BACKENDS": slow_emulator,
        "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/gateway.db",
        "GATEWAY_LOG_LEVEL": "warning",
    }
    replica = Replica(env).start()
    try:
        started = httpx.post(
            f"{replica.url}/gateway/batches",
            json={"model": MODEL, "prompts": [f"p{i}" for i in range(30)], "background": True},
            timeout=10,
        )
        job_id = started.json()["id"]
        wait_for(lambda: job_of(replica.url, job_id)["completed"] >= 3, 30, "3 runs")
        asked = time.monotonic()
        cancelled = httpx.post(f"{replica.url}/gateway/jobs/{job_id}/cancel", timeout=10)
        assert cancelled.status_code == 200 and cancelled.json()["cancel_requested"]
        final = wait_for(
            lambda: (j := job_of(replica.url, job_id))["status"] == "cancelled" and j, 5, "cancel"
        )
        took = time.monotonic() - asked
        seen = httpx.get(f"{slow_emulator}/_emulator/state").json()["requests"]
        time.sleep(1.0)
        later = httpx.get(f"{slow_emulator}/_emulator/state").json()["requests"]
    finally:
        replica.stop()
    assert took < 2.0, took
    assert later == seen, "the backend received runs after the job was cancelled"
    assert 3 <= final["completed"] < 30 and final["batch_id"] is None


@pytest.mark.parametrize("kind", ["benchmarks", "comparisons"])
def test_benchmarks_and_comparisons_run_as_jobs_with_the_same_reports(
    slow_emulator: str, tmp_path: Path, kind: str
) -> None:
    env = {
        "GATEWAY_BACKENDS": slow_emulator,
        "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/gateway.db",
        "GATEWAY_LOG_LEVEL": "warning",
    }
    body: dict[str, Any] = (
        {"model": MODEL, "test_prompts": ["one", "two"]}
        if kind == "benchmarks"
        else {"models": [MODEL, "qwen2.5:0.5b"], "prompt": "side by side"}
    )
    replica = Replica(env).start()
    try:
        direct = httpx.post(f"{replica.url}/gateway/{kind}", json=body, timeout=30)
        assert direct.status_code == 201, direct.text
        started = httpx.post(
            f"{replica.url}/gateway/{kind}", json={**body, "background": True}, timeout=10
        )
        assert started.status_code == 202, started.text
        assert started.headers["location"] == f"/gateway/jobs/{started.json()['id']}"
        job_id = started.json()["id"]
        final = wait_for(
            lambda: (j := job_of(replica.url, job_id))["status"] == "succeeded" and j, 30, "job"
        )
        report_id = final["benchmark_id" if kind == "benchmarks" else "comparison_id"]
        stored = httpx.get(f"{replica.url}/gateway/{kind}/{report_id}", timeout=10).json()
        first = httpx.get(f"{replica.url}/gateway/{kind}/{direct.json()['id']}", timeout=10).json()
    finally:
        replica.stop()
    assert set(stored["report"]) == set(first["report"])  # the same report, field for field
    assert len(stored["runs"]) == len(first["runs"]) == 2
    assert all(r["success"] for r in stored["runs"])


def test_a_user_key_sees_only_its_own_jobs_and_an_admin_all(
    slow_emulator: str, tmp_path: Path
) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path}/gateway.db"

    async def make_keys() -> dict[str, str]:
        store = KeyStore(database_url)
        try:
            return {
                name: (await store.acreate(name, scope)).key
                for name, scope in (("root", "admin"), ("alice", "user"), ("bob", "user"))
            }
        finally:
            await store.aclose()

    from app.storage.migrations import upgrade

    upgrade(database_url)
    keys = asyncio.run(make_keys())
    headers = {name: {"Authorization": f"Bearer {key}"} for name, key in keys.items()}
    env = {
        "GATEWAY_BACKENDS": slow_emulator,
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_REQUIRE_AUTH": "true",
        "GATEWAY_KEY_CACHE_SECONDS": "0",
        "GATEWAY_LOG_LEVEL": "warning",
    }
    replica = Replica(env).start()
    try:
        url = replica.url
        body = {"model": MODEL, "prompts": ["x", "y"], "background": True}
        job_id = httpx.post(f"{url}/gateway/batches", json=body, headers=headers["alice"]).json()[
            "id"
        ]
        final = wait_for(
            lambda: (j := job_of(url, job_id, headers["alice"]))["status"] == "succeeded" and j,
            30,
            "job",
        )
        assert final["owner"] == "alice"
        for path in (f"/gateway/jobs/{job_id}", f"/gateway/jobs/{job_id}/events",
                     f"/gateway/batches/jobs/{job_id}", f"/gateway/batches/{final['batch_id']}"):  # fmt: skip
            assert httpx.get(url + path, headers=headers["bob"]).status_code == 404, path
            assert httpx.get(url + path, headers=headers["root"]).status_code == 200, path
        assert (
            httpx.post(f"{url}/gateway/jobs/{job_id}/cancel", headers=headers["bob"]).status_code
            == 404
        )
        listed = httpx.get(f"{url}/gateway/jobs", headers=headers["bob"]).json()["items"]
        assert listed == []
        everything = httpx.get(f"{url}/gateway/jobs", headers=headers["root"]).json()["items"]
        assert [j["id"] for j in everything] == [job_id]
    finally:
        replica.stop()
