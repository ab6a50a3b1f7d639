"""The gateway's marginal CPU per streamed token: long streams, no token delay.

`bench/run.py`'s stream rows are 64 tokens long, so their CPU per token carries each
stream's fixed cost (key check, routing, the stored row: 4-6 ms, 0.06-0.09 ms a token over
64). Here each stream is `--tokens` long (20,000 by default), so what is left is the cost of
moving one token through each surface: the `/api` relay, `/v1` SSE and the gateway's own
SSE. Also the relay's capacity against direct: tokens/s of one stream read by one client.

    python bench/stream_cost.py [--tokens 20000] [--streams 2]

Run by hand; prints a table. One gateway (`ollama-gateway serve`, SQLite) and one emulator
on loopback, both on this machine's cores with the client.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.proc import cpu_total, quiesce
from tests.support.servers import free_port, running_emulator, running_process

MODEL = "llama3.1:8b"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=20_000, help="tokens per stream")
    parser.add_argument("--streams", type=int, default=2, help="streams per row, one at a time")
    args = parser.parse_args()
    n = args.tokens
    prompt = {"model": MODEL, "prompt": "tell me"}
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "tell me"}]}
    emulator_args = ("--reply-tokens", str(n))
    with (
        running_emulator(models=[MODEL], extra_args=emulator_args) as emulator,
        tempfile.TemporaryDirectory() as tmp,
    ):
        port = free_port()
        gateway = f"http://127.0.0.1:{port}"
        env = {
            "GATEWAY_BACKENDS": emulator,
            "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/bench.db",
            "GATEWAY_LOG_LEVEL": "warning",
        }
        serve = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
        with running_process(serve, gateway + "/healthz", env=env) as process:
            cases: list[tuple[str, str, dict[str, Any]]] = [
                ("direct  /api/generate", f"{emulator}/api/generate",
                 {**prompt, "options": {"num_predict": n}}),
                ("gateway /api/generate (relay)", f"{gateway}/api/generate",
                 {**prompt, "options": {"num_predict": n}}),
                ("gateway /v1/chat/completions (SSE)", f"{gateway}/v1/chat/completions",
                 {**chat, "stream": True, "max_tokens": n}),
                ("gateway /gateway/generate/stream (SSE)", f"{gateway}/gateway/generate/stream",
                 {**prompt, "options": {"max_tokens": n}}),
            ]  # fmt: skip
            print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average "
                  f"{os.getloadavg()[0]:.1f}; {args.streams} streams of {n} tokens per row")  # fmt: skip
            print(f"{'stream':40} {'tokens/s':>9} {'gateway CPU ms/token':>21}")
            with httpx.Client(timeout=600) as client:
                for name, url, body in cases:
                    quiesce(process.pid)
                    before, started = cpu_total(process.pid), time.monotonic()
                    for _ in range(args.streams):
                        with client.stream("POST", url, json=body) as reply:
                            reply.raise_for_status()
                            for _ in reply.iter_raw():
                                pass
                    wall = time.monotonic() - started
                    quiesce(process.pid)
                    spent = cpu_total(process.pid) - before
                    tokens = args.streams * n
                    print(f"{name:40} {tokens / wall:9.0f} {spent * 1000 / tokens:21.4f}")


if __name__ == "__main__":
    main()
