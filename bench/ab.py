"""Two trees of the gateway side by side, the same minutes: CPU per request, A against B.

Run by hand (not in CI), from the repository root, with a second tree checked out (e.g.
`git worktree add --detach /tmp/base main`):

    python bench/ab.py --tree /tmp/base --tree . [--tree ...] [--rounds 3] [--duration 3]
                       [--concurrency 1,32] [--streams 40]

One emulator; each tree's gateway (`serve`, one uvicorn worker, SQLite, a key on every
request) in front of it. Each row runs on every tree in turn, the order rotated every
round (A B C, B C A, ...), so all see the same machine load and none is always first,
and the table gives the median of the rounds: CPU ms per request (from /proc), req/s and
p50 for stored `/gateway/generate` and the `/api/chat` relay (non-streaming, wrk), and
CPU ms per 64-token `/api/generate` stream and chunks/s at concurrency 8, no token delay.
On a shared machine the medians of alternating rows are the figures to quote, not one row.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.proc import cpu_total, quiesce
from bench.run import MODEL, PROMPT, STREAM_TOKENS, TOKENS, streams, wrk
from tests.support.servers import free_port, running_emulator, running_process


def gateway(
    stack: ExitStack, tree: Path, emulator: str, tmp: str, name: str
) -> tuple[str, str, int]:
    port = free_port()
    env = {
        "GATEWAY_BACKENDS": emulator,
        "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/{name}.db",
        "GATEWAY_LOG_LEVEL": "warning",
    }
    made = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "create", "--name", "bench"],
        capture_output=True, text=True, check=True, env={**os.environ, **env}, cwd=tree,
    )  # fmt: skip
    key = made.stdout.split()[-1]
    serve = ["sh", "-c", f'cd "{tree}" && exec "{sys.executable}" -m app.cli serve --port {port}']
    url = f"http://127.0.0.1:{port}"
    proc = stack.enter_context(running_process(serve, url + "/healthz", env=env))
    return url, key, proc.pid


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--tree",
        type=Path,
        action="append",
        required=True,
        help="a tree to compare (given twice or more; the first is A)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--streams", type=int, default=40, help="streams per stream row")
    parser.add_argument(
        "--stream-routes",
        default="/api/generate",
        help="comma-separated: /api/generate, /gateway/generate/stream, /v1/chat/completions",
    )
    parser.add_argument(
        "--no-requests", action="store_true", help="the stream rows only (no wrk rows)"
    )
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    generate = {"model": MODEL, "prompt": PROMPT, "options": {"max_tokens": TOKENS}}
    chat = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}],
            "stream": False, "options": {"num_predict": TOKENS}}  # fmt: skip
    stream_bodies = {
        "/api/generate": {"model": MODEL, "prompt": PROMPT,
                          "options": {"num_predict": STREAM_TOKENS}},
        "/gateway/generate/stream": {"model": MODEL, "prompt": PROMPT,
                                     "options": {"max_tokens": STREAM_TOKENS}},
        "/v1/chat/completions": {"model": MODEL, "stream": True, "max_tokens": STREAM_TOKENS,
                                 "messages": [{"role": "user", "content": PROMPT}]},
    }  # fmt: skip
    stream_routes = [r for r in args.stream_routes.split(",") if r]
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with ExitStack() as stack:
        emulator = stack.enter_context(
            running_emulator(models=[MODEL], extra_args=("--reply-tokens", str(STREAM_TOKENS)))
        )
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        names = "ABCDEFGH"[: len(args.tree)]
        sides = {
            name: gateway(stack, tree.resolve(), emulator, tmp, name)
            for name, tree in zip(names, args.tree, strict=True)
        }
        rows = [(f"/gateway/generate stored c={c}", "/gateway/generate", generate, c)
                for c in levels]  # fmt: skip
        rows += [(f"/api/chat relay c={c}", "/api/chat", chat, c) for c in levels]
        if args.no_requests:
            rows = []
        for url, key, _ in sides.values():
            for _, path, body, _ in rows:
                wrk(url + path, body, 4, 1, key)  # warm up
        for round_ in range(args.rounds):
            turn = round_ % len(names)
            order = [(n, sides[n]) for n in names[turn:] + names[:turn]]
            for label, path, body, c in rows:
                for side, (url, key, pid) in order:
                    time.sleep(0.5)
                    before = cpu_total(pid)
                    values = wrk(url + path, body, c, args.duration, key)
                    quiesce(pid)
                    values["cpu"] = (cpu_total(pid) - before) * 1000 / max(values["requests"], 1)
                    results.setdefault((label, side), []).append(values)
            for route in stream_routes:
                for side, (url, key, pid) in order:
                    time.sleep(0.5)
                    before = cpu_total(pid)
                    values = asyncio.run(streams(url + route, stream_bodies[route], 8,
                                                 args.streams, key, None))  # fmt: skip
                    quiesce(pid)
                    values["cpu"] = (cpu_total(pid) - before) * 1000 / max(values["streams"], 1)
                    results.setdefault((f"{route} stream c=8", side), []).append(values)
            print(f"round {round_ + 1} done", file=sys.stderr, flush=True)
    trees = ", ".join(f"{n} = {t}" for n, t in zip(names, args.tree, strict=True))
    print(f"{trees}; medians of {args.rounds} rounds, the order rotated")
    print(f"{'row':34} {'side':>4} {'CPU ms':>8} {'req/s':>8} {'p50 ms':>8} {'chunks/s':>9}")
    labels = dict.fromkeys(label for label, _ in results)
    for label in labels:
        for side in names:
            got = results[(label, side)]
            cpu = statistics.median(v["cpu"] for v in got)
            if "rps" in got[0]:
                rps = statistics.median(v["rps"] for v in got)
                p50 = statistics.median(v["p50"] for v in got)
                print(f"{label:34} {side:>4} {cpu:8.2f} {rps:8.1f} {p50:8.2f}")
            else:
                rate = statistics.median(v["all"] for v in got)
                print(f"{label:34} {side:>4} {cpu:8.2f} {'':8} {'':8} {rate:9.1f}")


if __name__ == "__main__":
    main()
