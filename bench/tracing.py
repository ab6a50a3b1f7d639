"""What tracing costs: the gateway's CPU per stored `/gateway/generate`, tracing off and on.

Run by hand (not in CI), from the repository root:

    python bench/tracing.py [--duration 5] [--concurrency 1,32] [--transport aiohttp|httpx]

It starts the emulator and three `ollama-gateway serve` processes in front of it (one
uvicorn worker each, SQLite, an API key on every request, as in bench/run.py):

- tracing off (no OTEL_* variable: the SDK is not imported);
- tracing on, every trace sampled (`OTEL_TRACES_SAMPLER=parentbased_always_on`);
- tracing on, 10% sampled (`parentbased_traceidratio`, `OTEL_TRACES_SAMPLER_ARG=0.1`);

the two traced ones exporting OTLP/HTTP to a tiny sink in this process
(`tests/support/otlp_receiver.py`: it decodes and counts the spans). Then, for each
concurrency, the three are loaded one after another with `wrk` (bench/run.py's) and the
table gives requests/s, p50 and p99 latency, the gateway process's CPU milliseconds per
request (from /proc, bench/proc.py's), and the spans the sink received per request. All
on 127.0.0.1. One run on a shared machine: quote it as one run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.proc import cpu_total, quiesce, rss_mb
from bench.run import MODEL, PROMPT, TOKENS, machine, wrk
from tests.support.otlp_receiver import otlp_receiver
from tests.support.servers import free_port, running_emulator, running_process

CONFIGS = {
    "tracing off": {},
    "tracing on, 100% sampled": {"OTEL_TRACES_SAMPLER": "parentbased_always_on"},
    "tracing on, 10% sampled": {
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
    },
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk row")
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--transport", default="aiohttp", choices=["httpx", "aiohttp"])
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    body = {"model": MODEL, "prompt": PROMPT, "options": {"max_tokens": TOKENS}}
    started = datetime.now(UTC)
    results: list[tuple[str, int, dict[str, float]]] = []
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}

    with ExitStack() as stack:
        emulator = stack.enter_context(running_emulator(models=[MODEL]))
        sink = stack.enter_context(otlp_receiver(decode_spans=False))
        gateways: dict[str, tuple[str, int, str]] = {}
        for i, (name, otel) in enumerate(CONFIGS.items()):
            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            port = free_port()
            env = {
                **clean,
                "GATEWAY_BACKENDS": emulator,
                "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/bench.db",
                "GATEWAY_SPOOL_DIR": f"{tmp}/spool",
                "GATEWAY_LOG_LEVEL": "warning",
                "GATEWAY_HTTP_TRANSPORT": args.transport,
            }
            if otel:
                env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.url, **otel}
                env["OTEL_SERVICE_NAME"] = f"gateway-{i}"
            made = subprocess.run(
                [sys.executable, "-m", "app.cli", "keys", "create", "--name", "bench"],
                capture_output=True, text=True, check=True, env=env,
            )  # fmt: skip
            key = made.stdout.split()[-1]
            url = f"http://127.0.0.1:{port}"
            serve = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
            proc = stack.enter_context(running_process(serve, url + "/healthz", env=env))
            gateways[name] = (url, proc.pid, key, f"gateway-{i}")
        for url, _, key, _ in gateways.values():  # warm up: connections, caches, first spans
            wrk(f"{url}/gateway/generate", body, 4, 1, key)
            httpx.get(url + "/healthz")
        time.sleep(2)

        for connections in levels:
            for name, (url, pid, key, service) in gateways.items():
                time.sleep(0.5)
                spans_before = sink.by_service[service]
                before = cpu_total(pid)
                values = wrk(f"{url}/gateway/generate", body, connections, args.duration, key)
                quiesce(pid)
                time.sleep(5.5)  # the batch processor's last export (every 5 s by default)
                values["cpu"] = (cpu_total(pid) - before) * 1000 / max(values["requests"], 1)
                values["rss"] = rss_mb(pid)
                spans = sink.by_service[service] - spans_before
                values["spans"] = spans / max(values["requests"], 1)
                results.append((name, connections, values))
                print(f"{name} c={connections}: {values}", file=sys.stderr, flush=True)

    print(f"{started:%Y-%m-%d %H:%M} UTC; {machine()}")
    print(f"stored /gateway/generate, {TOKENS} tokens per reply, transport {args.transport}, "
          f"{args.duration:g} s per wrk row; traced gateways export OTLP/HTTP to a local sink "
          "(batch span processor, default settings)")  # fmt: skip
    print(f"\n{'gateway':28} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'non-2xx':>7} {'CPU ms/req':>10} {'spans/req':>9} {'RSS MB':>7}")  # fmt: skip
    for name, connections, r in results:
        bad = int(r["errors"] + r["socket_errors"])
        print(f"{name:28} {connections:4d} {r['rps']:8.1f} {r['p50']:8.2f} {r['p99']:8.2f} "
              f"{bad:7d} {r['cpu']:10.2f} {r['spans']:9.2f} {r['rss']:7.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
