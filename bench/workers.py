"""`/gateway/generate` with `serve --workers 1` and `--workers 2`, in one run.

Run by hand: `python bench/workers.py [--seconds 10] [--connections 32]`. Needs `wrk`
(Debian's package). Starts the emulator (no token delay, 32-token replies) and, in turn,
`ollama-gateway serve --workers N` on a fresh SQLite database, loads it with wrk for the
given time after a short warm-up, and prints requests/s and latency per setting. On a
2-core machine the emulator and wrk share the cores with the gateway, so the gain of a
second process is bounded by what they leave.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from jobs import gateway  # noqa: E402
from run import wrk  # noqa: E402

from tests.support.servers import running_emulator  # noqa: E402

MODEL = "llama3.1:8b"
BODY = {"model": MODEL, "prompt": "Explain recursion.", "options": {"max_tokens": 32}}


def measure(
    backend: str, workers: int, seconds: float, connections: int, server: str
) -> dict[str, float]:
    with (
        tempfile.TemporaryDirectory() as tmp,
        gateway(
            backend,
            f"sqlite+aiosqlite:///{tmp}/bench.db",
            "--workers",
            str(workers),
            "--server",
            server,
        ) as url,
    ):
        wrk(f"{url}/gateway/generate", BODY, connections, 3, None)  # warm-up
        return wrk(f"{url}/gateway/generate", BODY, connections, seconds, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--server", default="uvicorn", choices=["uvicorn", "granian"])
    args = parser.parse_args()
    with running_emulator(models=(MODEL,)) as backend:
        rows = [
            (n, measure(backend, n, args.seconds, args.connections, args.server)) for n in (1, 2)
        ]
    print(f"\nPOST /gateway/generate (stored), {args.server}, {args.connections} connections, "
          f"{args.seconds:g} s each, SQLite, {os.cpu_count()} cores")  # fmt: skip
    print(f"{'workers':>8} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for n, r in rows:
        print(f"{n:>8} {r['requests']:>9.0f} {r['rps']:>8.1f} {r['p50']:>8.1f} {r['p99']:>8.1f} "
              f"{r['errors'] + r['socket_errors']:>7.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
