"""The usage ledger's CPU cost per stored request: the runs' sums by ledger row and the one
upsert statement that adds them, in the transaction that stores the runs.

    python bench/ledger_cost.py [--transactions 300] [--repeats 5] [--no-postgres]

Run by hand (and at the end of bench/run.py). For SQLite (a file) and PostgreSQL (a fresh
database at 127.0.0.1:5432, dropped afterwards), with one run per transaction (a run
alone) and 32 runs per transaction (the group commit under load), it stores prebuilt
`executions` rows the way the group commit does (`insert_rows` on a connection) with and
without `charge_runs`, alternately, and prints the gateway process's CPU milliseconds per
stored run (`time.process_time`: the event loop and aiosqlite's thread; not the
PostgreSQL server's) and the difference, the ledger's cost. The runs are spread over 4
keys and 2 models, as several clients' runs are. The median of `--repeats` rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from app.ollama.stored_rows import execution_row
from app.ollama.types import ModelExecutionResult
from app.storage.migrations import upgrade
from app.storage.repositories import insert_rows
from app.storage.tables import Execution
from app.storage.usage_ledger import charge_runs

PG_DSN = os.environ.get("GATEWAY_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def rows(count: int) -> list[Execution]:
    out = []
    for i in range(count):
        result = ModelExecutionResult(
            model_name=("llama3.1:8b", "qwen2.5:7b")[i % 2],
            prompt="Explain recursion.",
            response="Recursion is " + "a function calling itself " * 6,
            execution_time=0.4,
            tokens_used=32,
            metadata={
                "kind": "generate",
                "surface": "openai",
                "backend": "http://gpu1:11434",
                "principal": f"key-{i % 4}",
                "team": f"team-{i % 2}",
                "prompt_eval_count": 24,
                "eval_count": 32,
                "total_duration": 412_000_000,
                "load_duration": 2_000_000,
            },
        )
        out.append(execution_row(result, kind="generate"))
    return out


async def measure(url: str, per_transaction: int, transactions: int, repeats: int) -> list[float]:
    """CPU ms per stored run: [without the ledger, with it] (medians)."""
    engine = create_async_engine(url, poolclass=AsyncAdaptedQueuePool, pool_size=2)
    plain: list[float] = []
    charged: list[float] = []
    try:
        for _ in range(repeats):
            for ledger, into in ((False, plain), (True, charged)):
                batches = [rows(per_transaction) for _ in range(transactions)]
                started = time.process_time()
                for batch in batches:
                    async with engine.begin() as connection:
                        await insert_rows(connection, batch)
                        if ledger:
                            await charge_runs(connection, batch)
                cpu = time.process_time() - started
                into.append(cpu * 1000 / (per_transaction * transactions))
    finally:
        await engine.dispose()
    return [statistics.median(plain), statistics.median(charged)]


def _pg_admin(sql: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(PG_DSN, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def report(transactions: int = 300, repeats: int = 5, postgres: bool = True) -> None:
    """Measure and print the table (bench/run.py calls this at its end)."""
    databases: list[tuple[str, str, str | None]] = []
    tmp = tempfile.mkdtemp(prefix="ledger-bench-")
    databases.append(("SQLite", f"sqlite+aiosqlite:///{tmp}/bench.db", None))
    if postgres:
        name = f"ledger_bench_{uuid.uuid4().hex[:12]}"
        try:
            _pg_admin(f'CREATE DATABASE "{name}"')
        except Exception as exc:
            print(f"note: PostgreSQL at {PG_DSN} is not usable ({exc!r}): SQLite only")
        else:
            base = PG_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
            databases.append(("PostgreSQL", f"{base}/{name}", name))
    print(
        f"\nthe usage ledger's CPU per stored run (ms, gateway process; median of {repeats} "
        f"rounds of {transactions} transactions)"
    )
    print(f"{'database':12} {'runs/txn':>8} {'without':>9} {'with':>9} {'ledger':>9}")
    try:
        for label, url, _ in databases:
            upgrade(url)
            for per_transaction in (1, 32):
                count = transactions if per_transaction == 1 else max(10, transactions // 16)
                without, with_ledger = asyncio.run(measure(url, per_transaction, count, repeats))
                print(
                    f"{label:12} {per_transaction:8d} {without:9.3f} {with_ledger:9.3f} "
                    f"{with_ledger - without:9.3f}"
                )
    finally:
        for _, _, name in databases:
            if name is not None:
                _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transactions", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    report(args.transactions, args.repeats, postgres=not args.no_postgres)


if __name__ == "__main__":
    main()
