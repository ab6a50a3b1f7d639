"""What running a batch as a job costs, per run, against the in-process path it replaced.

Run by hand: `python bench/jobs.py [--prompts 50] [--rounds 3]`. Starts the emulator with
no token delay and `ollama-gateway serve` on SQLite (the one-host queue) and on a fresh
PostgreSQL database (procrastinate), and times the same batch both ways on each:

- in-process: `POST /gateway/batches` with `background: false`, answered when every run is
  stored (the path jobs replaced: one request, results in memory, one report write);
- as a job: `POST ... background: true`, then polling `/gateway/jobs/{id}` every 10 ms
  until it has succeeded (record, engine hand-off, per-run write and event, report).

Prints the median of the rounds and the difference per run. Needs PostgreSQL at
127.0.0.1:5432 (trust auth) for the second half; skips it otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.databases import fresh_pg_database, pg_reachable  # noqa: E402
from tests.support.servers import free_port, running_emulator, wait_until_up  # noqa: E402

MODEL = "llama3.1:8b"


@contextlib.contextmanager
def gateway(backend: str, database_url: str, *args: str) -> Iterator[str]:
    """`ollama-gateway serve [args]` on a free port in front of `backend`; its URL."""
    port = free_port()
    env = {
        **os.environ,
        "GATEWAY_BACKENDS": backend,
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_PORT": str(port),
        "GATEWAY_AUTO_MIGRATE": "true",
        "GATEWAY_LOG_LEVEL": "warning",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url + "/healthz", proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def in_process(client: httpx.Client, prompts: list[str]) -> float:
    started = time.perf_counter()
    reply = client.post(
        "/gateway/batches",
        json={"model": MODEL, "prompts": prompts, "max_concurrent": 4, "background": False},
    )
    reply.raise_for_status()
    return time.perf_counter() - started


def as_job(client: httpx.Client, prompts: list[str]) -> float:
    started = time.perf_counter()
    reply = client.post(
        "/gateway/batches",
        json={"model": MODEL, "prompts": prompts, "max_concurrent": 4, "background": True},
    )
    reply.raise_for_status()
    job_id = reply.json()["id"]
    while True:
        job = client.get(f"/gateway/jobs/{job_id}").json()
        if job["status"] == "succeeded":
            return time.perf_counter() - started
        if job["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"job {job_id} ended {job['status']}: {job['error']}")
        time.sleep(0.01)


def measure(url: str, n: int, rounds: int) -> tuple[float, float]:
    prompts = [f"bench prompt {i}" for i in range(n)]
    with httpx.Client(base_url=url, timeout=120) as client:
        in_process(client, prompts[:4])  # warm up both paths
        as_job(client, prompts[:4])
        direct = statistics.median(in_process(client, prompts) for _ in range(rounds))
        jobs = statistics.median(as_job(client, prompts) for _ in range(rounds))
    return direct, jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with running_emulator(models=(MODEL,)) as backend:
        with (
            tempfile.TemporaryDirectory() as tmp,
            gateway(backend, f"sqlite+aiosqlite:///{tmp}/bench.db") as url,
        ):
            rows.append(("SQLite (one-host queue)", *measure(url, args.prompts, args.rounds)))
        if pg_reachable():
            with fresh_pg_database() as database_url, gateway(backend, database_url) as url:
                rows.append(
                    ("PostgreSQL (procrastinate)", *measure(url, args.prompts, args.rounds))
                )
        else:
            print("PostgreSQL is not reachable at 127.0.0.1:5432: its row is skipped")
    n = args.prompts
    print(f"\nbatch of {n} prompts, max_concurrent 4, emulator without token delay, "
          f"median of {args.rounds} rounds")  # fmt: skip
    print(f"{'database (engine)':28} {'in-process s':>13} {'as a job s':>11} "
          f"{'per run in-process ms':>22} {'per run as job ms':>18} {'overhead/run ms':>16}")  # fmt: skip
    for name, direct, job in rows:
        print(f"{name:28} {direct:13.3f} {job:11.3f} {direct / n * 1000:22.2f} "
              f"{job / n * 1000:18.2f} {(job - direct) / n * 1000:16.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
