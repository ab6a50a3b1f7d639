"""The gateway's PostgreSQL stopped under load: runs are still served (their results wait
in the spool, then reach the database once each), keys in use keep working, and what
needs the database answers 503 with Retry-After, never a 500. Each test stops and starts
a PostgreSQL server of its own (`tests.support.own_postgres`), never the shared one."""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.access import KeyStore
from app.main import create_app
from app.settings import Settings
from app.storage.migrations import upgrade
from app.storage.spool import RowSpool
from tests.api.conftest import gateway_settings, sse_events
from tests.support.own_postgres import OwnPostgres, own_postgres
from tests.support.replicas import Replica, wait_for
from tests.support.servers import serving_in_thread

MODEL = "llama3.1:8b"
GENERATE = {"model": MODEL, "prompt": "hi", "options": {"max_tokens": 4}}
CHAT = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "hi"}],
    "options": {"max_tokens": 4},
}


async def make_key(settings: Settings, name: str, scope: str = "user") -> str:
    store = KeyStore(settings.database_url)
    try:
        return (await store.acreate(name, scope, requests_per_minute=100_000)).key
    finally:
        await store.aclose()


def stored_ids(pg: OwnPostgres, database: str) -> collections.Counter[str]:
    return collections.Counter(pg.psql("SELECT id FROM executions", database))


@dataclass
class Reply:
    gateway: str
    sent_at: float
    status: int
    result_id: str | None
    text: str


@pytest.mark.timeout(180)
def test_a_database_outage_under_steady_load_answers_no_5xx_and_loses_no_result(
    emulator_url: str, tmp_path: Path
) -> None:
    """10 requests a second for 30 s (generations and chats, with a key made before the
    outage and anonymously on loopback, on two gateways), PostgreSQL stopped for 10 s in
    the middle: no 5xx; every result answered with a 200 is in the database afterwards,
    once."""
    rate, seconds, outage_at, outage_for = 10, 30.0, 10.0, 10.0
    with own_postgres() as pg:
        keyed = gateway_settings(
            [emulator_url], tmp_path, database_url=pg.url, spool_dir=tmp_path / "spool-keyed"
        )
        anonymous = gateway_settings(
            [emulator_url],
            tmp_path,
            database_url=pg.create_database("anonymous"),
            spool_dir=tmp_path / "spool-anonymous",
        )
        for settings in (keyed, anonymous):
            upgrade(settings.database_url)
        key = asyncio.run(make_key(keyed, "steady"))
        replies: list[Reply] = []
        seen: dict[str, Any] = {"readyz": [], "metrics": []}
        with (
            serving_in_thread(create_app(keyed)) as keyed_url,
            serving_in_thread(create_app(anonymous)) as anonymous_url,
        ):
            targets = [
                ("keyed", keyed_url, "/gateway/generate", GENERATE, {"Authorization": f"Bearer {key}"}),
                ("anonymous", anonymous_url, "/gateway/generate", GENERATE, {}),
                ("keyed", keyed_url, "/gateway/chat", CHAT, {"Authorization": f"Bearer {key}"}),
                ("anonymous", anonymous_url, "/gateway/chat", CHAT, {}),
            ]  # fmt: skip

            async def scenario() -> tuple[float, float]:
                loop = asyncio.get_running_loop()
                start = loop.time()
                window: list[float] = []
                async with httpx.AsyncClient(timeout=30) as client:

                    async def one(i: int) -> None:
                        name, base, path, body, headers = targets[i % len(targets)]
                        sent = loop.time() - start
                        r = await client.post(base + path, json=body, headers=headers)
                        rid = r.json().get("id") if r.status_code == 200 else None
                        replies.append(Reply(name, sent, r.status_code, rid, r.text[:300]))

                    async def load() -> None:
                        runs = []
                        for i in range(int(rate * seconds)):
                            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
                            runs.append(asyncio.create_task(one(i)))
                        await asyncio.gather(*runs)

                    async def outage() -> None:
                        await asyncio.sleep(outage_at)
                        await asyncio.to_thread(pg.stop)
                        window.append(loop.time() - start)
                        while loop.time() - start < outage_at + outage_for:
                            await asyncio.sleep(1.0)
                            ready = await client.get(anonymous_url + "/readyz")
                            seen["readyz"].append((ready.status_code, ready.json()))
                            metrics = await client.get(anonymous_url + "/metrics")
                            seen["metrics"].append(_gauge(metrics.text, "gateway_spool_entries"))
                        await asyncio.to_thread(pg.start)
                        window.append(loop.time() - start)

                    await asyncio.gather(load(), outage())
                return window[0], window[1]

            down_at, up_at = asyncio.run(scenario())

            # The spools empty into the database without a restart.
            spools = [RowSpool(s.spool_dir, s.database_url, s.spool_max_bytes) for s in (keyed, anonymous)]  # fmt: skip
            wait_for(lambda: all(s.depth().entries == 0 for s in spools), 30, "the spools to empty")
            after = httpx.get(anonymous_url + "/readyz", timeout=10).json()

        statuses = collections.Counter(r.status for r in replies)
        during = [r for r in replies if down_at <= r.sent_at <= up_at]
        print(
            f"\n{len(replies)} requests, statuses {dict(statuses)}; sent while PostgreSQL was "
            f"down ({down_at:.1f}-{up_at:.1f} s): {len(during)}, statuses "
            f"{dict(collections.Counter(r.status for r in during))}; spool depth seen by "
            f"/readyz {[b.get('spool', {}).get('entries') for _, b in seen['readyz']]}, "
            f"by /metrics {seen['metrics']}"
        )
        assert len(replies) == rate * seconds
        assert all(r.status < 500 for r in replies), [r.text for r in replies if r.status >= 500][
            :3
        ]
        assert statuses == {200: rate * seconds}, [r.text for r in replies if r.status != 200][:3]
        assert len(during) >= 50

        # /readyz: still ready (runs are served), the database degraded, the spool's depth.
        assert seen["readyz"] and all(code == 200 for code, _ in seen["readyz"])
        assert all(body["degraded"] == ["database"] for _, body in seen["readyz"])
        assert max(body["spool"]["entries"] for _, body in seen["readyz"]) > 0
        assert max(seen["metrics"]) > 0
        assert after["database"] == "ok" and after["spool"]["entries"] == 0

        # Every result answered with a 200 is stored, once; nothing else was stored.
        for name, database in (("keyed", "gateway"), ("anonymous", "anonymous")):
            answered = [r.result_id for r in replies if r.gateway == name]
            assert None not in answered
            stored = stored_ids(pg, database)
            assert set(stored) == set(answered)
            assert set(stored.values()) == {1}
            assert len(answered) == len(set(answered))
        owners = pg.psql("SELECT DISTINCT coalesce(principal, '-') FROM executions")
        assert owners == ["steady"]  # the keyed runs are filed under the key, spooled or not


def _gauge(exposition: str, name: str) -> float:
    for line in exposition.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in /metrics")


@pytest.mark.timeout(180)
def test_spooled_results_survive_a_sigkill_and_are_stored_once_after_restart(
    emulator_url: str, tmp_path: Path
) -> None:
    """`serve` SIGKILLed while 20 results wait in its spool (PostgreSQL down): started
    again with the same spool directory once the database is back, it stores all 20,
    none twice."""
    with own_postgres() as pg:
        upgrade(pg.url)
        spool_dir = tmp_path / "spool"
        env = {
            "GATEWAY_BACKENDS": emulator_url,
            "GATEWAY_DATABASE_URL": pg.url,
            "GATEWAY_SPOOL_DIR": str(spool_dir),
            "GATEWAY_LOG_LEVEL": "warning",
            "GATEWAY_EMBEDDED_WORKER": "false",
        }
        replica = Replica(env).start()
        try:
            first = httpx.post(f"{replica.url}/gateway/generate", json=GENERATE, timeout=30)
            assert first.status_code == 200
            pg.stop()
            ids = []
            for _ in range(20):
                r = httpx.post(f"{replica.url}/gateway/generate", json=GENERATE, timeout=30)
                assert r.status_code == 200, r.text
                ids.append(r.json()["id"])
            spool = RowSpool(spool_dir, pg.url, 1 << 30)
            assert spool.depth().entries == 20  # on disk before the answers went out
            replica.kill()
            pg.start()
            assert stored_ids(pg, "gateway") == {first.json()["id"]: 1}
            replica.start()  # same port, same spool directory
            wait_for(lambda: spool.depth().entries == 0, 30, "the spool to be written")
            stored = stored_ids(pg, "gateway")
            assert stored == collections.Counter([first.json()["id"], *ids])
            got = httpx.get(f"{replica.url}/gateway/results/{ids[-1]}", timeout=10)
            assert got.status_code == 200 and got.json()["id"] == ids[-1]
            print(f"\n20 spooled before SIGKILL; after restart {len(stored)} rows, each once")
        finally:
            replica.stop()


@pytest.mark.timeout(120)
def test_requests_that_need_the_database_get_503_with_retry_after(
    emulator_url: str, tmp_path: Path
) -> None:
    """While PostgreSQL is down: runs on every surface are answered (and stored later) by
    a key in use; what needs the database (listing, reading, a key not seen lately, the
    audit log, a new key) is 503 with Retry-After in each surface's shape; a full spool
    makes a run 503 too. After: a spooled result reads back."""
    with own_postgres() as pg:
        settings = gateway_settings(
            [emulator_url], tmp_path, database_url=pg.url, spool_dir=tmp_path / "spool"
        )
        no_room = gateway_settings(
            [emulator_url], tmp_path, database_url=pg.url, spool_dir=tmp_path / "s2",
            spool_max_bytes=0,
        )  # fmt: skip
        upgrade(pg.url)
        admin = asyncio.run(make_key(settings, "admin", "admin"))
        idle = asyncio.run(make_key(settings, "idle"))
        with (
            serving_in_thread(create_app(settings)) as url,
            serving_in_thread(create_app(no_room)) as full_url,
        ):
            client = httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {admin}"})  # fmt: skip
            full = httpx.Client(base_url=full_url, timeout=30, headers=client.headers)
            assert client.post("/gateway/generate", json=GENERATE).status_code == 200
            assert full.post("/gateway/generate", json=GENERATE).status_code == 200
            assert client.get("/gateway/results").status_code == 200
            pg.stop()

            ran = client.post("/gateway/generate", json=GENERATE)
            assert ran.status_code == 200, ran.text
            result_id = ran.json()["id"]
            streamed = client.post("/gateway/generate/stream", json=GENERATE)
            assert streamed.status_code == 200
            events = dict(sse_events(streamed.text))
            assert "result" in events, streamed.text
            openai = client.post("/v1/chat/completions", json={k: v for k, v in CHAT.items() if k != "options"})  # fmt: skip
            assert openai.status_code == 200, openai.text
            ollama = client.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False})  # fmt: skip
            assert ollama.status_code == 200, ollama.text

            def unavailable(reply: httpx.Response) -> None:
                assert reply.status_code == 503, (reply.request.url, reply.text)
                assert reply.headers["Retry-After"].isdigit(), reply.headers

            job = {"model": MODEL, "prompts": ["a", "b"], "background": True}
            for reply in (
                client.get("/gateway/results"),
                client.get(f"/gateway/results/{result_id}"),
                client.get("/gateway/audit"),
                client.post("/gateway/keys", json={"name": "new", "scope": "user"}),
                client.get("/gateway/jobs"),
                client.post("/gateway/batches", json=job),  # a job needs its record
            ):
                unavailable(reply)
                assert reply.json()["title"] == "Database unavailable", reply.text
            idle_key = {"Authorization": f"Bearer {idle}"}
            unknown = {"Authorization": "Bearer ogw_" + "x" * 43}
            for headers in (idle_key, unknown):
                reply = httpx.post(f"{url}/gateway/generate", json=GENERATE, headers=headers)
                unavailable(reply)
                assert "cannot be checked" in reply.json()["detail"]
            reply = httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers=idle_key)
            unavailable(reply)
            assert reply.json()["error"]["type"] == "api_error"  # OpenAI's shape
            reply = full.post("/gateway/generate", json=GENERATE)
            unavailable(reply)
            assert "spool" in reply.json()["detail"] and "full" in reply.json()["detail"]
            ready = full.get("/readyz").json()
            assert ready["status"] == "not ready" and ready["missing"] == ["database"]

            pg.start()
            wait_for(
                lambda: client.get(f"/gateway/results/{result_id}").status_code == 200,
                30,
                "the spooled result to be readable",
            )
            assert client.get("/gateway/results").status_code == 200
            client.close()
            full.close()
        surfaces = pg.psql("SELECT surface, count(*) FROM executions GROUP BY surface ORDER BY 1")
        # before: 2 generations; during: generate, stream, /v1 and /api (the full one: none)
        assert surfaces == ["gateway|4", "ollama|1", "openai|1"]
