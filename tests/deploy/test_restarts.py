"""Many processes, zero-downtime restarts: SIGTERM drains (readiness 503 at once, streams in
flight finish within the grace, longer ones end with `shutting_down`), `--workers 2` sums
its metrics, and HAProxy in front of three replicas restarted one by one under load loses
no request."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.support.databases import fresh_pg_database
from tests.support.replicas import Replica, wait_for
from tests.support.servers import ROOT, free_port, running_emulator

MODEL = "llama3.1:8b"


def sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", ""
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
        if data:
            events.append((name, json.loads(data)))
    return events


async def stream(url: str, prompt: str, started: asyncio.Event | None = None) -> str:
    """A `/gateway/generate/stream` run; its last event's name (`result` or `error...`)."""
    body = {"model": MODEL, "prompt": prompt}
    async with (
        httpx.AsyncClient(timeout=60) as client,
        client.stream("POST", f"{url}/gateway/generate/stream", json=body) as reply,
    ):
        text = ""
        async for piece in reply.aiter_text():
            text += piece
            if started is not None and "event: chunk" in text:
                started.set()
    events = sse(text)
    last_name, last = events[-1]
    return last_name if last_name == "result" else f"{last_name}:{last.get('code')}"


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
def test_sigterm_makes_readiness_fail_at_once_and_lets_streams_finish(
    tmp_path: Path, server: str
) -> None:
    """20 streams in flight get SIGTERM: /readyz is 503 at once, all 20 end with their
    `result` within the grace, and the process exits (under granian: `serve` drains
    before handing SIGTERM to granian)."""
    with running_emulator(models=(MODEL,), token_delay_ms=40) as backend:
        env = {
            "GATEWAY_BACKENDS": backend,
            "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/gateway.db",
            "GATEWAY_SHUTDOWN_DRAIN": "1",
            "GATEWAY_SHUTDOWN_GRACE": "20",
            "GATEWAY_LOG_LEVEL": "warning",
        }
        replica = Replica(env, ["--server", server]).start()

        async def scenario() -> tuple[list[str], int]:
            started = [asyncio.Event() for _ in range(20)]
            runs = [
                asyncio.create_task(stream(replica.url, f"tell me about {i}", started[i]))
                for i in range(20)
            ]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 30)
            replica.terminate()
            await asyncio.sleep(0.2)
            async with httpx.AsyncClient() as client:
                ready = (await client.get(f"{replica.url}/readyz")).status_code
            return list(await asyncio.gather(*runs)), ready

        try:
            endings, ready = asyncio.run(scenario())
            exit_code = replica.wait(timeout=30)
        finally:
            replica.stop()
    assert ready == 503
    assert endings == ["result"] * 20
    assert exit_code in (0, -15)  # uvicorn re-raises the SIGTERM it handled, once done


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
def test_a_stream_longer_than_the_grace_ends_with_shutting_down_and_is_stored(
    tmp_path: Path, server: str
) -> None:
    database = tmp_path / "gateway.db"
    with running_emulator(models=(MODEL,), token_delay_ms=300) as backend:
        env = {
            "GATEWAY_BACKENDS": backend,
            "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
            "GATEWAY_SHUTDOWN_DRAIN": "0.5",
            "GATEWAY_SHUTDOWN_GRACE": "2",
            "GATEWAY_LOG_LEVEL": "warning",
        }
        replica = Replica(env, ["--server", server]).start()

        async def scenario() -> str:
            started = asyncio.Event()
            run = asyncio.create_task(stream(replica.url, "a long story", started))
            await asyncio.wait_for(started.wait(), 30)
            replica.terminate()
            return await run

        try:
            ending = asyncio.run(scenario())
            replica.wait(timeout=30)
        finally:
            replica.stop()
    assert ending == "error:shutting_down"
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT status, response, metadata FROM executions").fetchall()
    assert [r[0] for r in rows] == ["cancelled"]
    assert json.loads(rows[0][2])["partial_response"]  # the text it had, kept


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
def test_drain_makes_readiness_fail_at_once_and_returns_when_streams_end(
    tmp_path: Path, server: str
) -> None:
    """`ollama-gateway drain` with 10 streams in flight on a replica of two processes:
    /readyz is 503 at once, new requests are still served, the drain returns only once
    every stream has ended with its `result`, and SIGTERM then ends the server within
    seconds (no second drain period)."""
    with running_emulator(models=(MODEL,), token_delay_ms=40) as backend:
        env = {
            "GATEWAY_BACKENDS": backend,
            "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/gateway.db",
            "GATEWAY_SHUTDOWN_DRAIN": "1",
            "GATEWAY_SHUTDOWN_GRACE": "20",
            "GATEWAY_LOG_LEVEL": "warning",
            "GATEWAY_DRAIN_FILE": str(tmp_path / "drain"),
        }
        replica = Replica(env, ["--server", server, "--workers", "2"]).start()

        async def scenario() -> tuple[list[tuple[str, float]], list[int], int, float]:
            started = [asyncio.Event() for _ in range(10)]

            async def timed(i: int) -> tuple[str, float]:
                ending = await stream(replica.url, f"tell me about {i}", started[i])
                return ending, time.monotonic()

            runs = [asyncio.create_task(timed(i)) for i in range(10)]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 30)
            draining = asyncio.create_task(asyncio.to_thread(replica.drain))
            await asyncio.to_thread(wait_for, (tmp_path / "drain").exists, 30, "the drain file")
            await asyncio.sleep(0.5)  # more than two polls of the drain file
            async with httpx.AsyncClient() as client:
                # new connections each: both processes answer
                ready = [
                    (
                        await client.get(f"{replica.url}/readyz", headers={"Connection": "close"})
                    ).status_code
                    for _ in range(6)
                ]
                late = (await client.get(f"{replica.url}/gateway/models")).status_code
            await draining
            drained = time.monotonic()
            return list(await asyncio.gather(*runs)), [*ready, late], 0, drained

        try:
            endings, codes, _, drained = asyncio.run(scenario())
            stopping = time.monotonic()
            replica.terminate()
            exit_code = replica.wait(timeout=30)
            stopped = time.monotonic() - stopping
        finally:
            replica.stop()
    assert codes == [503] * 6 + [200]
    assert [e for e, _ in endings] == ["result"] * 10
    assert all(ended <= drained for _, ended in endings)  # the drain waited for them
    assert stopped < 8, f"{stopped:.1f} s from SIGTERM to exit"
    assert exit_code in (0, -15)


def metric_value(text: str, route: str) -> float:
    found = re.search(
        r'gateway_requests_total\{method="GET",route="'
        + re.escape(route)
        + r'",status="200"\} (\S+)',
        text,
    )
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
def test_two_workers_sum_their_metrics_whichever_answers(tmp_path: Path, server: str) -> None:
    with running_emulator(models=(MODEL,)) as backend:
        env = {
            "GATEWAY_BACKENDS": backend,
            "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/gateway.db",
            "GATEWAY_LOG_LEVEL": "warning",
        }
        replica = Replica(env, ["--server", server, "--workers", "2"]).start()
        try:
            time.sleep(2)  # the second process up too
            sent = 40
            for _ in range(sent):  # a new connection each: spread over both processes
                assert httpx.get(f"{replica.url}/gateway/models", timeout=10).status_code == 200
            scrapes = [
                metric_value(
                    httpx.get(f"{replica.url}/metrics", timeout=10).text, "/gateway/models"
                )
                for _ in range(6)
            ]
        finally:
            replica.stop()
    assert scrapes == [float(sent)] * 6


HAPROXY_CONFIG = """
global
    maxconn 2000
defaults
    mode http
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    retries 3
    option redispatch
    retry-on conn-failure empty-response response-timeout
frontend gateway
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 300ms fall 1 rise 2
{servers}
"""


@contextlib.contextmanager
def haproxy(replica_ports: list[int], tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(binary).exists():
        pytest.skip("haproxy is not installed (.ci/run installs it)")
    port = free_port()
    servers = "\n".join(f"    server r{i} 127.0.0.1:{p} check" for i, p in enumerate(replica_ports))
    config = tmp_path / "haproxy.cfg"
    config.write_text(HAPROXY_CONFIG.format(port=port, servers=servers))
    proc = subprocess.Popen([binary, "-f", str(config), "-db"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(url), 15, "haproxy")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _answers(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    return False


@pytest.mark.parametrize(
    ("server", "stop"),
    [("uvicorn", "sigterm"), ("granian", "drain, then sigterm"), ("granian", "sigterm")],
)
def test_haproxy_in_front_of_three_replicas_restarted_one_by_one_loses_nothing(
    tmp_path: Path, server: str, stop: str
) -> None:
    """Three replicas (one with `--workers 2`) on one PostgreSQL behind HAProxy; a steady
    load of plain and streamed generations for at least 20 s while each replica in turn
    gets SIGTERM and is started again: no request fails, every stream ends with its
    `result`, and every result answered is in the database. SIGTERM alone drains (under
    granian `serve` drains before handing the signal over), or `ollama-gateway drain` runs
    first, as Kubernetes' preStop does."""
    with (
        running_emulator(models=(MODEL,), token_delay_ms=10) as backend,
        fresh_pg_database() as database_url,
    ):
        env = {
            "GATEWAY_BACKENDS": backend,
            "GATEWAY_DATABASE_URL": database_url,
            "GATEWAY_AUTO_MIGRATE": "true",
            "GATEWAY_SHUTDOWN_DRAIN": "1.5",
            "GATEWAY_SHUTDOWN_GRACE": "20",
            "GATEWAY_LOG_LEVEL": "warning",
        }
        chosen = ["--server", server]
        fleet = [
            Replica(env, chosen),
            Replica(env, [*chosen, "--workers", "2"]),
            Replica(env, chosen),
        ]
        for replica in fleet:
            replica.start()
        try:
            with haproxy([r.port for r in fleet], tmp_path) as url:
                outcome = asyncio.run(
                    _load_while_restarting(url, fleet, drain_first=stop.startswith("drain"))
                )
        finally:
            for replica in fleet:
                replica.stop()
        plain_ids, stream_ids, failures, duration = outcome
        print(  # for the record (-s)
            f"haproxy rolling restart: {len(plain_ids)} plain, {len(stream_ids)} streamed, "
            f"{len(failures)} failed, {duration:.1f} s"
        )
        assert failures == [], failures[:5]
        assert duration >= 20
        stored = asyncio.run(_stored_ids(database_url))
    assert len(plain_ids) > 50 and len(stream_ids) > 20
    missing = (set(plain_ids) | set(stream_ids)) - stored
    assert not missing, f"{len(missing)} answered results are not stored"


async def _load_while_restarting(
    url: str, fleet: list[Replica], *, drain_first: bool = False
) -> tuple[list[str], list[str], list[str], float]:
    plain_ids: list[str] = []
    stream_ids: list[str] = []
    failures: list[str] = []
    stop = asyncio.Event()
    started = time.monotonic()

    async def plain_loop(client: httpx.AsyncClient, n: int) -> None:
        while not stop.is_set():
            try:
                reply = await client.post(
                    f"{url}/gateway/generate", json={"model": MODEL, "prompt": f"plain {n}"}
                )
                if reply.status_code != 200 or not reply.json().get("id"):
                    failures.append(
                        f"plain {reply.status_code} at {time.monotonic() - started:.1f}: {reply.text[:200]}"
                    )
                else:
                    plain_ids.append(reply.json()["id"])
            except httpx.HTTPError as exc:
                failures.append(f"plain {type(exc).__name__}: {exc}")
            await asyncio.sleep(0.05)

    async def stream_loop(client: httpx.AsyncClient, n: int) -> None:
        while not stop.is_set():
            body = {"model": MODEL, "prompt": f"streamed {n}"}
            try:
                async with client.stream(
                    "POST", f"{url}/gateway/generate/stream", json=body
                ) as reply:
                    text = (await reply.aread()).decode()
                events = sse(text) if reply.status_code == 200 else []
                if not events or events[-1][0] != "result":
                    failures.append(f"stream {reply.status_code}: {text[-300:]}")
                else:
                    stream_ids.append(events[-1][1]["id"])
            except httpx.HTTPError as exc:
                failures.append(
                    f"stream {type(exc).__name__} at {time.monotonic() - started:.1f}: {exc}"
                )
            await asyncio.sleep(0.05)

    async def restarts() -> None:
        await asyncio.sleep(3)
        for replica in fleet:
            if drain_first:
                await asyncio.to_thread(replica.drain)
            replica.terminate()
            await asyncio.to_thread(replica.wait, 40)
            await asyncio.to_thread(replica.start)
            await asyncio.sleep(3)  # back in rotation (two health checks), then the next
        await asyncio.sleep(max(0.0, 22 - (time.monotonic() - started)))
        stop.set()

    limits = httpx.Limits(max_keepalive_connections=0)  # each request through the balancer
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        workers = [plain_loop(client, i) for i in range(4)] + [
            stream_loop(client, i) for i in range(3)
        ]
        await asyncio.gather(restarts(), *workers)
    return plain_ids, stream_ids, failures, time.monotonic() - started


async def _stored_ids(database_url: str) -> set[str]:
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        return {r["id"] for r in await conn.fetch("SELECT id FROM executions")}
    finally:
        await conn.close()
