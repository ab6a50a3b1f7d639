"""The CPU cost per request of quotas: the check before a request's runs (and its count)
plus the charge after its run, with the syncs of the counters with the database that the
requests cause, amortised over them.

    python bench/quota_cost.py [--requests 20000] [--keys 50] [--database-url URL]

Run by hand, and by bench/run.py at its end. Three cases on the same principals (keys
spread over teams): no quotas set (what every request pays: its key and team are still
counted), token quotas set (per day and per month, on keys and teams), and
`requests_per_day` set. Requests come as fast as the check takes; the counters sync every
0.2 s (five times as often as `GATEWAY_QUOTA_SYNC_SECONDS`' default, so the syncs weigh
more than in production). CPU is `time.process_time()` of this process, the database
driver's thread included (SQLite by default: a file in a temporary directory).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.access.principal import Principal, Quotas
from app.access.quotas import QuotaService, QuotaSpent
from app.ollama.usage import RunUsage, run_principal, run_team
from app.storage.migrations import ensure_schema

SYNC_SECONDS = 0.2
TARGET_MS = 0.2
"""The issue's budget: quota check and charge together with the usage ledger, per request."""


def principals(keys: int, quotas: Quotas | None) -> list[Principal]:
    return [
        Principal(
            name=f"key-{i}",
            scope="user",
            key_id=f"id-{i}",
            team=f"team-{i % 5}",
            quotas=quotas,
            team_quotas=quotas,
        )
        for i in range(keys)
    ]


async def measure(database_url: str, requests: int, keys: int, quotas: Quotas | None) -> float:
    """CPU milliseconds per request of check + charge (+ amortised syncs)."""
    service = QuotaService(database_url, sync_seconds=SYNC_SECONDS)
    await service._prepare()
    who = principals(keys, quotas)
    usage = RunUsage(
        model="llama3.1:8b",
        surface="gateway",
        kind="generate",
        success=True,
        prompt_tokens=30,
        completion_tokens=32,
        time_to_first_token=0.01,
        duration=0.05,
        backend="http://127.0.0.1:11434",
        backend_seconds=0.05,
        load_seconds=0.0,
    )
    for principal in who:  # first sight of each pair: one read each, not what is measured
        await service.aadmit(principal)
    await service.async_once()
    service.start()
    refused = 0
    started = time.process_time()
    wall = time.perf_counter()
    for i in range(requests):
        principal = who[i % keys]
        try:
            await service.aadmit(principal)
        except QuotaSpent:
            refused += 1
            continue
        name, team = run_principal.set(principal.name), run_team.set(principal.team)
        service.observe_run(usage)
        run_team.reset(team)
        run_principal.reset(name)
        if i % 200 == 0:
            await asyncio.sleep(0)  # let the syncs run, as a serving loop would
    # what the requests charged is written too: a whole number of syncs
    elapsed = time.perf_counter() - wall
    await asyncio.sleep(max(0.0, SYNC_SECONDS - elapsed % SYNC_SECONDS))
    await service.async_once()
    cpu = time.process_time() - started
    await service.aclose()
    if refused == requests:
        raise RuntimeError("every request was refused: the case measures nothing")
    return cpu * 1000 / requests


def report(requests: int = 20_000, keys: int = 50, database_url: str | None = None) -> list[str]:
    """The table's lines."""
    cases = [
        ("no quotas set", None),
        (
            "token quotas (day, month; key and team)",
            Quotas(tokens_per_day=10**12, tokens_per_month=10**13),
        ),
        ("requests_per_day (key and team)", Quotas(requests_per_day=10**9)),
    ]
    lines = [
        f"quota check + charge, {requests} requests over {keys} keys in 5 teams, "
        f"sync every {SYNC_SECONDS:g} s (target with the ledger: {TARGET_MS} ms/request)",
        f"{'case':44} {'CPU ms/request':>14}",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, quotas in cases:
            url = database_url or f"sqlite+aiosqlite:///{tmp}/{len(lines)}.db"
            ensure_schema(url)
            ms = asyncio.run(measure(url, requests, keys, quotas))
            lines.append(f"{name:44} {ms:14.4f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument("--database-url", help="default: SQLite in a temporary directory")
    args = parser.parse_args()
    print("\n".join(report(args.requests, args.keys, args.database_url)))


if __name__ == "__main__":
    main()
