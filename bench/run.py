"""The gateway against its backend directly, and against LiteLLM's proxy: one table.

Run by hand (not in CI), from the repository root:

    python bench/run.py [--duration 5] [--litellm /path/to/venv/bin/litellm]
                        [--transport httpx|aiohttp] [--engine filler|llama-cpp]

Non-streaming load comes from `wrk` (Debian's package; a Python client would be the
bottleneck at 128 connections) at concurrency 1, 32 and 128: requests/s, p50 and p99
latency, and the gateway process's CPU milliseconds per request (from /proc). Streaming is
measured with httpx at concurrency 1 and 8: time to first chunk and chunks/s per stream.
LiteLLM (`pip install 'litellm[proxy]'` in a venv of its own) runs with one worker and its
`ollama_chat/` provider against the same emulator; its rows are left out without
`--litellm`. Quote ratios from one run: these machines are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.servers import free_port, running_emulator, running_process

MODEL = "llama3.1:8b"
LITELLM_KEY = "sk-bench-" + "0" * 32
PROMPT = "Explain recursion."
TOKENS = 32
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def wrk(
    url: str, body: dict[str, Any], connections: int, duration: float, key: str | None
) -> dict[str, float]:
    payload = json.dumps(body).replace("\\", "\\\\").replace("'", "\\'")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            f"wrk.method = 'POST'\nwrk.body = '{payload}'\n"
            "wrk.headers['Content-Type'] = 'application/json'\n"
        )
        if key:
            script.write(f"wrk.headers['Authorization'] = 'Bearer {key}'\n")
    threads = min(2, connections)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(int(duration), 1)}s", "--latency",
         "--timeout", "30s", "-s", script.name, url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    os.unlink(script.name)

    def ms(label: str) -> float:
        match = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if match is None:
            return float("nan")
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests": requests,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50": ms("50%"),
        "p99": ms("99%"),
        "errors": int(errors.group(1)) if errors else 0,
    }


async def streams(
    url: str, body: dict[str, Any], concurrency: int, count: int, key: str | None
) -> dict[str, float]:
    """Time to first chunk and chunks/s per stream, over `count` streams."""
    ttfts: list[float] = []
    rates: list[float] = []
    gate = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(timeout=60, limits=limits, headers=headers) as client:

        async def one() -> None:
            async with gate:
                started = time.perf_counter()
                first: float | None = None
                chunks = 0
                async with client.stream("POST", url, json=body) as reply:
                    async for line in reply.aiter_lines():
                        if not line or line.startswith((":", "event:")):
                            continue
                        if first is None:
                            first = time.perf_counter()
                        chunks += 1
                ended = time.perf_counter()
                if first is not None:
                    ttfts.append(first - started)
                    rates.append(chunks / max(ended - first, 1e-6))

        await asyncio.gather(*(one() for _ in range(count)))
    return {"ttft": statistics.median(ttfts) * 1000, "rate": statistics.median(rates)}


@contextmanager
def litellm_proxy(binary: str, emulator: str) -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "litellm.yaml"
        config.write_text(
            "model_list:\n"
            f"  - model_name: {MODEL}\n"
            "    litellm_params:\n"
            f"      model: ollama_chat/{MODEL}\n"
            f"      api_base: {emulator}\n"
            "litellm_settings:\n  telemetry: false\n  set_verbose: false\n"
        )
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        args = [binary, "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                "--num_workers", "1"]  # fmt: skip
        env = {"LITELLM_TELEMETRY": "False", "LITELLM_LOG": "ERROR", "NO_DOCS": "True",
               "LITELLM_MASTER_KEY": LITELLM_KEY}  # fmt: skip
        with running_process(args, url + "/health/liveliness", env=env):
            yield url


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--litellm", help="the litellm command of a venv with litellm[proxy]")
    parser.add_argument("--transport", default="aiohttp", choices=["httpx", "aiohttp"])
    parser.add_argument("--engine", default="filler", choices=["filler", "llama-cpp"])
    parser.add_argument("--concurrency", default="1,32,128")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    model = MODEL if args.engine == "filler" else "smollm2:135m"
    generate = {"model": model, "prompt": PROMPT, "stream": False,
                "options": {"num_predict": TOKENS}}  # fmt: skip
    chat = {"model": model, "messages": [{"role": "user", "content": PROMPT}]}
    rows: list[tuple[str, int, dict[str, float], float | None]] = []
    stream_rows: list[tuple[str, int, dict[str, float]]] = []
    extra = ("--engine", "llama-cpp") if args.engine == "llama-cpp" else ()
    settle = 1.0 if args.engine == "llama-cpp" else 0.0
    with ExitStack() as stack:
        emulator = stack.enter_context(running_emulator(models=[model], extra_args=extra))
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        port = free_port()
        gateway = f"http://127.0.0.1:{port}"
        env = {
            "GATEWAY_BACKENDS": emulator,
            "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/bench.db",
            "GATEWAY_LOG_LEVEL": "warning",
            "GATEWAY_HTTP_TRANSPORT": args.transport,
        }
        # Both gateways check a key on every request, as they would in production.
        made = subprocess.run(
            [sys.executable, "-m", "app.cli", "keys", "create", "--name", "bench"],
            capture_output=True, text=True, check=True, env={**os.environ, **env},
        )  # fmt: skip
        key = made.stdout.split()[-1]
        serve = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
        proc = stack.enter_context(running_process(serve, gateway + "/healthz", env=env))
        litellm = (
            stack.enter_context(litellm_proxy(args.litellm, emulator)) if args.litellm else None
        )

        gateway_body = {"model": model, "prompt": PROMPT, "options": {"max_tokens": TOKENS}}
        v1_body = {**chat, "max_tokens": TOKENS}
        cases: list[tuple[str, str, dict[str, Any], str | None]] = [
            ("direct  /api/generate", f"{emulator}/api/generate", generate, None),
            ("gateway /api/generate (stored)", f"{gateway}/api/generate", generate, key),
            ("gateway /gateway/generate (stored)", f"{gateway}/gateway/generate", gateway_body,
             key),
            ("gateway /gateway/generate (save=false)", f"{gateway}/gateway/generate",
             {**gateway_body, "save": False}, key),
            ("direct  /api/chat", f"{emulator}/api/chat",
             {**chat, "stream": False, "options": {"num_predict": TOKENS}}, None),
            ("gateway /v1/chat/completions (stored)", f"{gateway}/v1/chat/completions", v1_body,
             key),
        ]  # fmt: skip
        if litellm is not None:
            cases.append(("litellm /v1/chat/completions", f"{litellm}/v1/chat/completions",
                          v1_body, LITELLM_KEY))  # fmt: skip
        for name, url, body, auth in cases:
            ours = auth == key
            wrk(url, body, 4, 1, auth)  # warm up
            for connections in levels:
                # wrk stops on time, not when replies are done: let a slow (real) engine
                # finish what is still queued before the next row starts
                time.sleep(settle * 4)
                before = cpu_seconds(proc.pid)
                result = wrk(url, body, connections, args.duration, auth)
                cpu = (cpu_seconds(proc.pid) - before) * 1000 / max(result["requests"], 1)
                rows.append((name, connections, result, cpu if ours else None))

        streamed = {"model": model, "prompt": PROMPT, "options": {"num_predict": TOKENS}}
        stream_cases: list[tuple[str, str, dict[str, Any], str | None]] = [
            ("direct  /api/generate", f"{emulator}/api/generate", streamed, None),
            ("gateway /api/generate", f"{gateway}/api/generate", streamed, key),
            ("gateway /gateway/generate/stream", f"{gateway}/gateway/generate/stream",
             gateway_body, key),
            ("gateway /v1/chat/completions", f"{gateway}/v1/chat/completions",
             {**v1_body, "stream": True}, key),
        ]  # fmt: skip
        if litellm is not None:
            stream_cases.append(("litellm /v1/chat/completions", f"{litellm}/v1/chat/completions",
                                 {**v1_body, "stream": True}, LITELLM_KEY))  # fmt: skip
        for name, url, body, auth in stream_cases:
            for concurrency in (1, 8):
                stream_rows.append(
                    (name, concurrency, asyncio.run(streams(url, body, concurrency, 40, auth)))
                )

    print(f"engine {args.engine}, transport {args.transport}, {TOKENS} tokens per reply, "
          f"{args.duration:g} s per row")  # fmt: skip
    print(f"{'non-streaming':40} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'errors':>6} {'gw CPU ms/req':>13}")  # fmt: skip
    for name, connections, r, cpu in rows:
        cpu_text = f"{cpu:13.2f}" if cpu is not None else f"{'':13}"
        print(f"{name:40} {connections:4d} {r['rps']:8.1f} {r['p50']:8.2f} {r['p99']:8.2f} "
              f"{int(r['errors']):6d} {cpu_text}")  # fmt: skip
    print(f"\n{'streaming':40} {'conc':>4} {'TTFT p50 ms':>12} {'chunks/s per stream':>20}")
    for name, concurrency, s in stream_rows:
        print(f"{name:40} {concurrency:4d} {s['ttft']:12.2f} {s['rate']:20.1f}")


if __name__ == "__main__":
    main()
