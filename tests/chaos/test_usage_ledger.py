"""The usage ledger adds up to the stored runs: per key and per hour, its requests,
failures, prompt and output tokens, backend and load seconds equal the sums of the
`executions` rows, after a mixed load over every surface (and a batch job) on two
`serve` replicas sharing PostgreSQL, a SIGTERM of one of them mid-stream, and a 10 s
outage of the database (the runs spooled meanwhile are charged once, when replayed).
The usage of a run nobody stores (an embedding) reaches the ledger from memory, also
when its process gets SIGTERM before the next periodic flush.

PostgreSQL is a server of the test's own (`tests.support.own_postgres`): it is stopped."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import pytest

from app.access import KeyStore
from app.storage.migrations import upgrade
from app.storage.spool import RowSpool
from tests.api.conftest import set_faults
from tests.chaos.streams import RESPONSES, SURFACES, stream
from tests.support.own_postgres import OwnPostgres, own_postgres
from tests.support.replicas import Replica, wait_for

MODEL = "llama3.1:8b"
SPOOL_MAX = 1 << 30

EXECUTIONS = """
SELECT coalesce(principal, ''), to_char(date_trunc('hour', created_at AT TIME ZONE 'UTC'),
       'YYYY-MM-DD"T"HH24'), count(*), count(*) FILTER (WHERE NOT success),
       coalesce(sum(prompt_tokens), 0), coalesce(sum(tokens_used), 0),
       coalesce(sum(total_duration_ns), 0),
       coalesce(sum((metadata::jsonb ->> 'load_duration')::bigint), 0)
FROM executions GROUP BY 1, 2 ORDER BY 1, 2
"""
LEDGER = """
SELECT principal, to_char(bucket AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24'), sum(requests),
       sum(failures), sum(prompt_tokens), sum(output_tokens), sum(backend_seconds),
       sum(load_seconds)
FROM usage_ledger GROUP BY 1, 2 ORDER BY 1, 2
"""


def _table(pg: OwnPostgres, sql: str, nanoseconds: bool) -> dict[tuple[str, str], list[float]]:
    """(key, hour) → [requests, failures, prompt, output, backend s, load s]."""
    out = {}
    for line in pg.psql(" ".join(sql.split())):
        key, hour, *numbers = line.split("|")
        values = [float(n) for n in numbers]
        if nanoseconds:
            values[4:] = [v / 1e9 for v in values[4:]]
        out[(key, hour)] = values
    return out


def _start_all(replicas: list[Replica]) -> None:
    """Start the replicas at once (each start waits for imports and the schema)."""
    errors: list[BaseException] = []

    def start(replica: Replica) -> None:
        try:
            replica.start()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(r,)) for r in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


async def _mixed_load(url: str, keys: dict[str, str], prompt: str) -> list[int]:
    """One streamed run per surface (every surface, `/v1/responses` too) and one plain
    `/gateway/generate` per key, all at once; the statuses."""

    async def one(key: str, surface: str) -> int:
        headers = {"Authorization": f"Bearer {key}", "anthropic-version": "2023-06-01"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
            if surface == "plain":
                body = {"model": MODEL, "prompt": prompt, "options": {"max_tokens": 6}}
                return (await client.post("/gateway/generate", json=body)).status_code
            return (await stream(client, surface, MODEL, prompt, limit=6)).status

    runs = [one(k, s) for k in keys.values() for s in (*SURFACES, RESPONSES, "plain")]
    return list(await asyncio.gather(*runs))


@pytest.mark.timeout(180)
def test_the_ledger_equals_the_stored_runs_after_replicas_a_sigterm_and_an_outage(
    emulator_url: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    with own_postgres() as pg:
        upgrade(pg.url)
        keys = {name: asyncio.run(_make_key(pg.url, name)) for name in ("ana", "ben", "cat")}
        spools = {name: tmp_path / f"spool-{name}" for name in ("a", "b")}
        replicas = [
            Replica(
                {
                    "GATEWAY_BACKENDS": emulator_url,
                    "GATEWAY_DATABASE_URL": pg.url,
                    "GATEWAY_SPOOL_DIR": str(spools[name]),
                    "GATEWAY_LOG_LEVEL": "warning",
                    "GATEWAY_SHUTDOWN_DRAIN": "0",
                    "GATEWAY_SHUTDOWN_GRACE": "1",
                    "GATEWAY_EMBEDDED_WORKER": "true" if name == "a" else "false",
                }
            )
            for name in ("a", "b")
        ]
        a, b = replicas
        _start_all(replicas)
        try:
            # 1. A mixed load on both replicas, every surface, two keys; a batch job.
            users = {k: keys[k] for k in ("ana", "ben")}
            job = httpx.post(
                f"{a.url}/gateway/batches",
                json={"model": MODEL, "prompts": [f"p{i}" for i in range(12)],
                      "options": {"max_tokens": 4}, "background": True},
                headers={"Authorization": f"Bearer {keys['ana']}"},
                timeout=30,
            )  # fmt: skip
            assert job.status_code == 202, job.text

            async def both() -> list[list[int]]:
                return list(
                    await asyncio.gather(
                        _mixed_load(a.url, users, "first"), _mixed_load(b.url, users, "second")
                    )
                )

            statuses = asyncio.run(both())
            assert all(s == 200 for group in statuses for s in group), statuses
            job_url = f"{a.url}/gateway/jobs/{job.json()['id']}"
            admin = {"Authorization": f"Bearer {keys['ana']}"}
            wait_for(
                lambda: (
                    httpx.get(job_url, headers=admin, timeout=10).json()["status"] == "succeeded"
                ),
                60,
                "the batch job",
            )

            # 2. An embedding (not a stored run) on b, then SIGTERM of b while streams run
            # there: the streams end (stored, or stored as cancelled), the embedding's usage
            # is flushed at shutdown, before its 2 s period.
            embedded = httpx.post(
                f"{b.url}/v1/embeddings",
                json={"model": MODEL, "input": ["some text to embed"]},
                headers={"Authorization": f"Bearer {keys['cat']}"},
                timeout=30,
            )
            assert embedded.status_code == 200, embedded.text
            embed_tokens = embedded.json()["usage"]["prompt_tokens"]
            set_faults(emulator_url, token_delay_ms=400)  # 6 tokens: 2.4 s, over the grace

            async def cut() -> list[int]:
                load = asyncio.ensure_future(_mixed_load(b.url, users, "cut short"))
                await asyncio.sleep(0.5)
                b.terminate()
                return await load

            asyncio.run(cut())
            b.wait(30)  # uvicorn ends by raising the SIGTERM it caught again: -15
            set_faults(emulator_url, token_delay_ms=0)

            # 3. PostgreSQL down for 10 s under load on a: the runs are spooled, then
            # replayed (and charged) once.
            pg.stop()
            down = time.monotonic()
            outage_statuses: list[int] = []
            while time.monotonic() - down < 10:
                outage_statuses += asyncio.run(_mixed_load(a.url, users, "outage"))
            pg.start()
            spool = RowSpool(spools["a"], pg.url, SPOOL_MAX)
            assert spool.depth().entries > 0
            wait_for(lambda: spool.depth().entries == 0, 30, "the spool to be written")
            assert outage_statuses.count(200) >= 10, outage_statuses
        finally:
            for replica in replicas:
                replica.stop()

        runs = _table(pg, EXECUTIONS, nanoseconds=True)
        ledger = _table(pg, LEDGER, nanoseconds=False)
        # cat's only run is the embedding: not a stored run, in the ledger all the same.
        cat = [key_hour for key_hour in ledger if key_hour[0] == "cat"]
        assert len(cat) == 1
        assert ledger[cat[0]][:4] == [1, 0, embed_tokens, 0]
        del ledger[cat[0]]
        assert set(ledger) == set(runs)
        for key_hour, counts in runs.items():
            mine = ledger[key_hour]
            assert mine[:4] == counts[:4], key_hour
            assert mine[4:] == pytest.approx(counts[4:], rel=1e-9, abs=1e-6), key_hour
        totals = [sum(v[i] for v in runs.values()) for i in range(6)]
        job_owner = pg.psql("SELECT DISTINCT principal FROM executions WHERE job_id IS NOT NULL")
        surfaces = set(pg.psql("SELECT DISTINCT surface FROM executions"))
        print(
            f"\n{int(totals[0])} stored runs ({int(totals[1])} failed or cancelled), "
            f"{int(totals[2])} prompt and {int(totals[3])} output tokens, "
            f"{totals[4]:.3f} backend s; surfaces {sorted(surfaces)}; "
            f"ledger rows per key and hour equal; {time.monotonic() - started:.1f} s"
        )
        assert job_owner == ["ana"]
        assert surfaces >= {"gateway", "ollama", "openai", "anthropic", "responses"}
        assert {k for k, _ in runs} == {"ana", "ben"}
        assert totals[2] > 0 and totals[3] > 0 and totals[4] > 0
        assert totals[1] > 0  # the streams cut by the SIGTERM are stored, as cancelled


async def _make_key(database_url: str, name: str) -> str:
    store = KeyStore(database_url)
    try:
        return (await store.acreate(name, "user", requests_per_minute=100_000)).key
    finally:
        await store.aclose()
