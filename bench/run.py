"""Throughput and latency of the emulator alone and of the gateway in front of it.

Run by hand (not in CI): `python bench/run.py [--requests 400] [--concurrency 16]`.
Prints one table; quote ratios from a single run, as these machines are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.servers import free_port, running_emulator, running_process


async def load(
    url: str, body: dict[str, object], requests: int, concurrency: int, stream: bool
) -> tuple[float, list[float]]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one() -> None:
            async with gate:
                started = time.perf_counter()
                if stream:
                    async with client.stream("POST", url, json=body) as r:
                        async for _ in r.aiter_bytes():
                            pass
                else:
                    r = await client.post(url, json=body)
                assert r.status_code == 200, r.status_code
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(requests)))
        return time.perf_counter() - started, latencies


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    prompt = {"prompt": "Explain recursion.", "options": {"num_predict": 32}}
    rows = []
    with running_emulator(models=["llama3.1:8b"]) as emulator, tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = {
            "GATEWAY_BACKENDS": emulator,
            "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/bench.db",
            "GATEWAY_LOG_LEVEL": "warning",
        }
        gateway = f"http://127.0.0.1:{port}"
        serve = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
        with running_process(serve, gateway + "/healthz", env=env) as proc:
            cases = [
                ("emulator /api/generate", f"{emulator}/api/generate",
                 {"model": "llama3.1:8b", **prompt, "stream": False}, False),
                ("gateway /gateway/generate (save=false)", f"{gateway}/gateway/generate",
                 {"model": "llama3.1:8b", "prompt": prompt["prompt"],
                  "options": {"max_tokens": 32}, "save": False}, False),
                ("gateway /gateway/generate (stored)", f"{gateway}/gateway/generate",
                 {"model": "llama3.1:8b", "prompt": prompt["prompt"],
                  "options": {"max_tokens": 32}}, False),
                ("gateway /gateway/generate/stream (stored)", f"{gateway}/gateway/generate/stream",
                 {"model": "llama3.1:8b", "prompt": prompt["prompt"],
                  "options": {"max_tokens": 32}}, True),
            ]  # fmt: skip
            for name, url, body, stream in cases:
                asyncio.run(load(url, body, 20, 4, stream))  # warm up
                wall, lat = asyncio.run(load(url, body, args.requests, args.concurrency, stream))
                lat.sort()
                rows.append(
                    (
                        name,
                        args.requests / wall,
                        statistics.median(lat) * 1000,
                        lat[int(len(lat) * 0.95) - 1] * 1000,
                    )
                )
            memory = rss_mib(proc.pid)
    print(f"{args.requests} requests, {args.concurrency} concurrent, 32 tokens each")
    print(f"{'case':44} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8}")
    for name, rps, p50, p95 in rows:
        print(f"{name:44} {rps:8.1f} {p50:8.1f} {p95:8.1f}")
    print(f"gateway RSS after the run: {memory:.0f} MiB")


if __name__ == "__main__":
    main()
