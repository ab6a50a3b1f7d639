"""The gateway against its backend directly, and against LiteLLM's proxy: one table.

Run by hand (not in CI), from the repository root:

    python bench/run.py [--duration 5] [--litellm /path/to/venv/bin/litellm]
                        [--transport aiohttp|httpx] [--engine filler|llama-cpp]
                        [--only REGEX] [--concurrency 1,32,128] [--stream-concurrency 1,8]
                        [--stream-delay-ms 5] [--profile 32 [--profile-dir DIR]]

It starts the emulator (`ollama-gateway emulator`), the gateway in front of it
(`ollama-gateway serve`: one uvicorn worker, SQLite, an API key on every request) and,
with `--litellm`, LiteLLM's proxy (one worker, its `ollama_chat/` provider, pointed at the
same emulator), all on 127.0.0.1, and prints one table:

- non-streaming (32 tokens a reply: the emulator's filler runs to `--reply-tokens 64`,
  cut by each request's maximum) at concurrency 1, 32, 128 and 256, load from `wrk`
  (Debian's package, a Lua script for the POST body; one Python process would be the
  bottleneck at 128 connections): requests/s, p50 and p99 latency, non-2xx replies, and
  the CPU milliseconds per request of the gateway's (or LiteLLM's) process, from /proc,
  and its resident memory at the row's end;
- streaming (64 tokens a stream) at concurrency 1 and 8, from an aiohttp client: time to
  first chunk, chunks/s per stream and over all streams, CPU milliseconds per stream and
  per streamed token, resident memory at the row's end;
  once with no delay between tokens (the relay's own cost per chunk) and once with
  `--stream-delay-ms` between tokens (a fast GPU's pace), set on the emulator.

The OpenAI and agent surfaces have rows of their own, non-streaming and streaming:
`/v1/chat/completions`, Anthropic's `/v1/messages` (Claude Code; with the
`anthropic-version` header its clients send) and OpenAI's `/v1/responses` (Codex; stored,
its default, and with `store: false`), LiteLLM's proxy beside each (its
rows say "not served" with the reply when one request of the row's kind fails there).
The gateway's rows for a route are left out, with a note, when it does not serve it.
`--profile C` then loads each gateway case again at concurrency C under `py-spy` and
prints where the gateway's CPU goes (by package, by function, and the inclusive time of
the gateway's functions and of the library calls they make).
At its end it prints `bench/ledger_cost.py`'s table: the usage ledger's CPU per stored run,
bench/quota_cost.py's table: the CPU per request of the quota check and charge (no
quotas, token quotas, requests_per_day), and bench/prefix_cost.py's: what the prefix index
adds to a request's routing at 64 backends (fingerprint, ranking, lease and record).
Quote ratios from one run: these machines are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import ledger_cost
from bench.prefix_cost import report as prefix_cost_report
from bench.proc import cpu_seconds, cpu_total, loaded, quiesce, rss_mb
from bench.quota_cost import report as quota_cost_report
from tests.support.servers import free_port, running_emulator, running_process

MODEL = "llama3.1:8b"
LITELLM_KEY = "sk-bench-" + "0" * 32
PROMPT = "Explain recursion."
TOKENS = 32
STREAM_TOKENS = 64


@dataclass
class Case:
    name: str
    url: str
    body: dict[str, Any]
    key: str | None = None
    pid: int | None = None  # the process whose CPU is charged to this case
    note: str | None = None  # why the case is skipped
    headers: dict[str, str] = field(default_factory=dict)  # beside the key's


@dataclass
class Row:
    case: Case
    concurrency: int
    values: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def wrk(
    url: str,
    body: dict[str, Any],
    connections: int,
    duration: float,
    key: str | None,
    headers: dict[str, str] | None = None,
) -> dict[str, float]:
    payload = json.dumps(body).replace("\\", "\\\\").replace("'", "\\'")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            f"wrk.method = 'POST'\nwrk.body = '{payload}'\n"
            "wrk.headers['Content-Type'] = 'application/json'\n"
        )
        if key:
            script.write(f"wrk.headers['Authorization'] = 'Bearer {key}'\n")
        for name, value in (headers or {}).items():
            script.write(f"wrk.headers['{name}'] = '{value}'\n")
    threads = min(2, connections)
    try:
        out = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(int(duration), 1)}s",
             "--latency", "--timeout", "30s", "-s", script.name, url],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    finally:
        os.unlink(script.name)

    def ms(label: str) -> float:
        match = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if match is None:
            return float("nan")
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    def number(pattern: str) -> float:
        match = re.search(pattern, out)
        if match is None:
            raise RuntimeError(f"unexpected wrk output:\n{out}")
        return float(match.group(1))

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "requests": number(r"(\d+) requests in"),
        "rps": number(r"Requests/sec:\s+([\d.]+)"),
        "p50": ms("50%"),
        "p99": ms("99%"),
        "errors": int(errors.group(1)) if errors else 0,
        "socket_errors": sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
        if socket_errors
        else 0,
    }


async def streams(
    url: str,
    body: dict[str, Any],
    concurrency: int,
    count: int,
    key: str | None,
    extra_headers: dict[str, str] | None = None,
) -> dict[str, float]:
    """Time to first chunk, chunks/s per stream and in all, over `count` streams.

    A chunk is an NDJSON line or an SSE `data:` line (OpenAI's `[DONE]` excluded). On the
    typed SSE surfaces (Anthropic's, OpenAI Responses') the events around the text (message
    or response created, block or item opened and closed, the end) are chunks too: a
    64-token stream is 64 + 6 chunks on `/v1/messages`, 64 + 8 on `/v1/responses`, against
    64 + 1 on the gateway's `/v1/chat/completions`.
    """
    ttfts: list[float] = []
    rates: list[float] = []
    total_chunks = 0
    failures = 0
    gate = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    headers.update(extra_headers or {})
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        headers=headers, timeout=timeout, connector=connector
    ) as session:

        async def one() -> None:
            nonlocal total_chunks, failures
            async with gate:
                started = time.perf_counter()
                first: float | None = None
                chunks = 0
                async with session.post(url, json=body) as reply:
                    if reply.status != 200:
                        failures += 1
                        await reply.read()
                        return
                    async for raw in reply.content:
                        line = raw.strip()
                        if not line or line.startswith((b":", b"event:", b"data: [DONE]")):
                            continue
                        if first is None:
                            first = time.perf_counter()
                        chunks += 1
                ended = time.perf_counter()
                total_chunks += chunks
                if first is not None and chunks > 1:
                    ttfts.append(first - started)
                    rates.append((chunks - 1) / max(ended - first, 1e-6))

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        elapsed = time.perf_counter() - started
    if not rates:
        raise RuntimeError(f"no stream succeeded ({failures} non-200 replies)")
    return {
        "ttft": statistics.median(ttfts) * 1000,
        "rate": statistics.median(rates),
        "all": total_chunks / elapsed,
        "streams": len(rates),
        "errors": failures,
    }


def keep_streaming(case: Case, concurrency: int, seconds: float) -> None:
    """Streams from `case`, `concurrency` at a time, for about `seconds` (for profiles)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        asyncio.run(
            streams(case.url, case.body, concurrency, 4 * concurrency, case.key, case.headers)
        )


def set_token_delay(emulator: str, delay_ms: float) -> None:
    httpx.post(f"{emulator}/_emulator/faults", json={"token_delay_ms": delay_ms}).raise_for_status()


def serves(url: str, body: dict[str, Any], key: str) -> bool:
    """Whether the gateway has a route for `url` (anything but a 404/405 says so)."""
    reply = httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    return reply.status_code not in (404, 405)


# What a whole streamed reply ends with, by route (a pattern; in an `event:` line or in
# the data's `type`, which is all LiteLLM's Responses stream sends): without it, it failed.
STREAM_ENDS = {
    "/v1/chat/completions": r"data: \[DONE\]",
    "/v1/messages": r"message_stop",
    "/v1/responses": r"response\.(completed|incomplete)",
}
STREAM_FAILURES = ("event: error", "event: response.failed", '"type":"error"', '"type": "error"')


def refusal(case: Case, streamed: bool = False) -> str | None:
    """Why one request of `case` was not answered as it should be (None when it was): a
    status other than 200, a non-streamed reply that is not JSON, a streamed one without
    its route's final event or with an error event. For the rows of LiteLLM's routes,
    which it may not serve against this backend: wrk counts non-2xx replies but would
    still time them."""
    headers = {**case.headers, **({"Authorization": f"Bearer {case.key}"} if case.key else {})}
    try:
        reply = httpx.post(case.url, json=case.body, headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    text = " ".join(reply.text.split())
    if reply.status_code != 200:
        return f"HTTP {reply.status_code}: {text[:200]}"
    if not streamed:
        try:
            json.loads(reply.text)
        except ValueError:
            return f"HTTP 200 but not JSON: {text[:200]}"
        return None
    if any(mark in text for mark in STREAM_FAILURES):
        return f"an error event in the stream: {text[-200:]}"
    end = next((e for route, e in STREAM_ENDS.items() if case.url.endswith(route)), None)
    if end is not None and not re.search(end, text):
        return f"no final event ({end}): {text[-200:]}"
    return None


@contextmanager
def litellm_proxy(binary: str, emulator: str) -> Iterator[tuple[str, int]]:
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
        # No telemetry, no model-cost map fetched from GitHub at start, no debug logs.
        env = {"LITELLM_TELEMETRY": "False", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
               "LITELLM_LOG": "ERROR", "NO_DOCS": "True", "LITELLM_MASTER_KEY": LITELLM_KEY}  # fmt: skip
        with running_process(args, url + "/health/liveliness", env=env) as proc:
            yield url, proc.pid


def litellm_version(binary: str) -> str:
    found = sorted(
        Path(binary).resolve().parent.parent.glob("lib/python*/site-packages/litellm-*.dist-info")
    )
    return found[-1].name.removeprefix("litellm-").removesuffix(".dist-info") if found else "?"


def profile(pid: int, seconds: float, out: Path) -> None:
    """Sample `pid`'s threads while they hold the GIL (Python-level CPU work; idle waits
    release the GIL and are left out) with py-spy, into collapsed stacks. py-spy pauses the
    process for each sample (its non-blocking mode tears coroutine stacks apart), which
    slows the gateway down by about a third: the shares hold, the throughput does not."""
    beside = Path(sys.executable).parent / "py-spy"
    command = str(beside) if beside.exists() else "py-spy"
    subprocess.run(
        [command, "record", "--pid", str(pid), "--duration", str(max(int(seconds), 1)),
         "--rate", "200", "--gil", "--format", "raw", "--output", str(out)],
        capture_output=True, check=True,
    )  # fmt: skip


# Frames every sample passes through: process start-up, uvicorn, the event loop.
SCAFFOLD = ("<frozen runpy>", "typer/", "click/", "uvicorn/main.py", "uvicorn/server.py",
            "uvicorn/_compat.py", "asyncio/runners.py", "app/cli.py", "threading.py",
            "(ollama-gateway")  # fmt: skip
FRAMEWORK = ("fastapi/", "starlette/", "uvicorn/", "pydantic/")


def source(frame: str) -> str:
    """The file of a py-spy frame, `function (path)`."""
    return frame.rpartition(" (")[2].rstrip(")")


def summarize(raw: Path, top: int = 12) -> list[str]:
    """Where py-spy's samples are: self time by package and by function; inclusive time
    (a function and all it calls) of the gateway's functions, of the framework's, and of
    the library calls the gateway makes."""
    own: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        own[frames[-1]] += count
        packages[source(frames[-1]).split("/")[0]] += count
        for frame in set(frames):
            if not any(part in frame for part in SCAFFOLD):
                inclusive[frame] += count
        called, from_app = set(), False
        for frame in frames:
            path = source(frame)
            if path == "contextlib.py":  # `async with` wrappers: see what they enter
                continue
            if from_app and not path.startswith(("app/", *FRAMEWORK, *SCAFFOLD)):
                called.add(frame)
            from_app = path.startswith("app/") and path != "app/cli.py"
        for frame in called:
            calls[frame] += count
    if not total:
        return ["  (no samples)"]

    def share(counter: Counter[str], limit: int) -> list[str]:
        return [f"    {n * 100 / total:5.1f}%  {f}" for f, n in counter.most_common(limit)]

    ours = Counter({f: n for f, n in inclusive.items() if source(f).startswith("app/")})
    framework = Counter(
        {f: n for f, n in inclusive.items() if source(f).startswith(FRAMEWORK) and n < 0.5 * total}
    )  # fmt: skip
    return [
        f"  {total} samples with the GIL held, all threads; self time by package:",
        "    " + ", ".join(f"{p} {n * 100 / total:.0f}%" for p, n in packages.most_common(10)),
        "  self time by function:",
        *share(own, top),
        "  inclusive time of the gateway's own functions:",
        *share(ours, top + 4),
        "  inclusive time of library calls made from the gateway's code:",
        *share(calls, top),
        "  inclusive time of framework functions (under 50%: the layers every request",
        "  passes through left out):",
        *share(framework, top),
    ]


def conc(row: Row) -> str:
    return f"{row.concurrency:4d}" if row.concurrency else f"{'-':>4}"


def outcome(error: str) -> str:
    """A row's error as the table prints it: skipped and refused cases as they are."""
    return error if error.startswith(("skipped", "not served")) else f"failed: {error}"


def machine() -> str:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory = Path("/proc/meminfo").read_text().split()[1]
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {int(memory) // 1024**2} GiB, "
        f"Linux {platform.release()}, Python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk row")
    parser.add_argument("--litellm", help="the litellm command of a venv with litellm[proxy]")
    parser.add_argument("--transport", default="aiohttp", choices=["httpx", "aiohttp"])
    parser.add_argument(
        "--server",
        default="uvicorn",
        choices=["uvicorn", "granian"],
        help="what serves the gateway: `ollama-gateway serve` (uvicorn) or granian "
        "(`pip install granian`; the same app from `app.main:create_app`, one worker, uvloop)",
    )
    parser.add_argument("--engine", default="filler", choices=["filler", "llama-cpp"])
    parser.add_argument("--concurrency", default="1,32,128,256")
    parser.add_argument("--stream-concurrency", default="1,8")
    parser.add_argument("--stream-delay-ms", type=float, default=5.0)
    parser.add_argument("--only", help="run only the cases whose name matches this regex")
    parser.add_argument("--profile", type=int, help="py-spy each gateway case at this concurrency")
    parser.add_argument("--profile-dir", type=Path, help="keep py-spy's collapsed stacks here")
    parser.add_argument(
        "--no-extras",
        action="store_true",
        help="leave out the ledger, quota and prefix index cost tables",
    )
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    stream_levels = [int(c) for c in args.stream_concurrency.split(",")]
    model = MODEL if args.engine == "filler" else "smollm2:135m"
    generate = {"model": model, "prompt": PROMPT, "stream": False,
                "options": {"num_predict": TOKENS}}  # fmt: skip
    chat = {"model": model, "messages": [{"role": "user", "content": PROMPT}]}
    rows: list[Row] = []
    stream_rows: list[tuple[float, Row]] = []
    profiles: list[tuple[str, list[str]]] = []
    notes: list[str] = []
    # The filler's answers run to the tokens asked for (its own length for a prompt is 20
    # to 60 tokens: 28 for PROMPT, which would cut every reply and stream short).
    extra = (
        ("--engine", "llama-cpp")
        if args.engine == "llama-cpp"
        else ("--reply-tokens", str(max(TOKENS, STREAM_TOKENS)))
    )
    settle = 4.0 if args.engine == "llama-cpp" else 0.5
    started = datetime.now(UTC)
    if args.profile_dir:
        args.profile_dir.mkdir(parents=True, exist_ok=True)

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

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
        if args.server == "granian":
            serve = [*serve, "--server", "granian"]  # what `serve --server granian` runs
        gw = stack.enter_context(running_process(serve, gateway + "/healthz", env=env)).pid
        httpx.get(f"{gateway}/healthz")
        server_libs = loaded(gw, "uvloop", "httptools") or ["neither uvloop nor httptools"]
        if args.server == "granian":
            server_libs = ["granian", *loaded(gw, "uvloop")]
        litellm: str | None = None
        litellm_pid: int | None = None
        if args.litellm:
            litellm, litellm_pid = stack.enter_context(litellm_proxy(args.litellm, emulator))
            notes.append(f"LiteLLM {litellm_version(args.litellm)}, one worker, ollama_chat/")

        gateway_body = {"model": model, "prompt": PROMPT, "options": {"max_tokens": TOKENS}}
        v1_body = {**chat, "max_tokens": TOKENS}
        # The agent surfaces (issue 26): Anthropic's Messages API (Claude Code) with the
        # header Anthropic's clients send, and OpenAI's Responses API (Codex), stored (its
        # default: the response is kept to be continued) and not.
        anthropic = {"anthropic-version": "2023-06-01"}
        messages_body = {**chat, "max_tokens": TOKENS}
        responses_body = {"model": model, "input": PROMPT, "max_output_tokens": TOKENS}
        unserved: dict[str, str | None] = {}
        for route, probe_body in (("/v1/chat/completions", v1_body),
                                  ("/v1/messages", messages_body),
                                  ("/v1/responses", {**responses_body, "store": False})):  # fmt: skip
            unserved[route] = None
            if not serves(f"{gateway}{route}", probe_body, key):
                unserved[route] = f"the gateway does not serve {route} (404): rows skipped"
                notes.append(unserved[route] or "")
        v1_note = unserved["/v1/chat/completions"]
        chat_whole = {**chat, "stream": False, "options": {"num_predict": TOKENS}}
        cases = [
            Case("direct  /api/generate", f"{emulator}/api/generate", generate),
            Case("gateway /api/generate (stored)", f"{gateway}/api/generate", generate, key, gw),
            Case("gateway /gateway/generate (stored)", f"{gateway}/gateway/generate",
                 gateway_body, key, gw),
            Case("gateway /gateway/generate (save=false)", f"{gateway}/gateway/generate",
                 {**gateway_body, "save": False}, key, gw),
            Case("direct  /api/chat", f"{emulator}/api/chat", chat_whole),
            Case("gateway /api/chat (stored)", f"{gateway}/api/chat", chat_whole, key, gw),
            Case("gateway /v1/chat/completions (stored)", f"{gateway}/v1/chat/completions",
                 v1_body, key, gw, v1_note),
            Case("gateway /v1/messages (stored)", f"{gateway}/v1/messages", messages_body,
                 key, gw, unserved["/v1/messages"], anthropic),
            Case("gateway /v1/responses (stored)", f"{gateway}/v1/responses", responses_body,
                 key, gw, unserved["/v1/responses"]),
            Case("gateway /v1/responses (store=false)", f"{gateway}/v1/responses",
                 {**responses_body, "store": False}, key, gw, unserved["/v1/responses"]),
        ]  # fmt: skip
        if litellm is not None:
            cases += [
                Case("litellm /v1/chat/completions", f"{litellm}/v1/chat/completions",
                     v1_body, LITELLM_KEY, litellm_pid),
                Case("litellm /v1/messages", f"{litellm}/v1/messages", messages_body,
                     LITELLM_KEY, litellm_pid, headers=anthropic),
                Case("litellm /v1/responses", f"{litellm}/v1/responses", responses_body,
                     LITELLM_KEY, litellm_pid),
            ]  # fmt: skip
        if args.only:
            cases = [c for c in cases if re.search(args.only, c.name)]

        for case in cases:
            if case.note:
                rows.append(Row(case, 0, error=f"skipped: {case.note}"))
                continue
            if case.pid is not None and case.pid == litellm_pid:
                why = refusal(case)
                if why is not None:
                    rows.append(Row(case, 0, error=f"not served by LiteLLM: {why}"))
                    progress(f"{case.name}: not served: {why}")
                    continue
            try:
                wrk(case.url, case.body, 4, 1, case.key, case.headers)  # warm up
            except (subprocess.CalledProcessError, RuntimeError) as exc:
                rows.append(Row(case, 0, error=f"warm-up failed: {exc}"))
                continue
            for connections in levels:
                # wrk stops on time, not when replies are done: let what is still queued
                # (a slow engine, LiteLLM's backlog) finish before the next row starts
                time.sleep(settle)
                row = Row(case, connections)
                try:
                    before = cpu_total(case.pid) if case.pid else 0.0
                    row.values = wrk(case.url, case.body, connections, args.duration,
                                     case.key, case.headers)  # fmt: skip
                    if case.pid:
                        quiesce(case.pid)
                        spent = cpu_total(case.pid) - before
                        row.values["cpu"] = spent * 1000 / max(row.values["requests"], 1)
                        row.values["rss"] = rss_mb(case.pid)  # at the row's end
                except (subprocess.CalledProcessError, RuntimeError) as exc:
                    row.error = str(exc).strip().splitlines()[-1]
                rows.append(row)
                progress(f"{case.name} c={connections}: {row.values or row.error}")

        stream_body = {"model": model, "prompt": PROMPT, "options": {"num_predict": STREAM_TOKENS}}
        stream_gateway = {**gateway_body, "options": {"max_tokens": STREAM_TOKENS}}
        stream_v1 = {**chat, "max_tokens": STREAM_TOKENS, "stream": True}
        stream_messages = {**messages_body, "max_tokens": STREAM_TOKENS, "stream": True}
        stream_responses = {**responses_body, "max_output_tokens": STREAM_TOKENS, "stream": True}
        stream_cases = [
            Case("direct  /api/generate", f"{emulator}/api/generate", stream_body),
            Case("gateway /api/generate (stored)", f"{gateway}/api/generate", stream_body,
                 key, gw),
            Case("gateway /gateway/generate/stream", f"{gateway}/gateway/generate/stream",
                 stream_gateway, key, gw),
            Case("direct  /api/chat", f"{emulator}/api/chat",
                 {**chat, "options": {"num_predict": STREAM_TOKENS}}),
            Case("gateway /v1/chat/completions", f"{gateway}/v1/chat/completions", stream_v1,
                 key, gw, v1_note),
            Case("gateway /v1/messages", f"{gateway}/v1/messages", stream_messages, key, gw,
                 unserved["/v1/messages"], anthropic),
            Case("gateway /v1/responses (stored)", f"{gateway}/v1/responses", stream_responses,
                 key, gw, unserved["/v1/responses"]),
            Case("gateway /v1/responses (store=false)", f"{gateway}/v1/responses",
                 {**stream_responses, "store": False}, key, gw, unserved["/v1/responses"]),
        ]  # fmt: skip
        if litellm is not None:
            stream_cases += [
                Case("litellm /v1/chat/completions", f"{litellm}/v1/chat/completions",
                     stream_v1, LITELLM_KEY, litellm_pid),
                Case("litellm /v1/messages", f"{litellm}/v1/messages", stream_messages,
                     LITELLM_KEY, litellm_pid, headers=anthropic),
                Case("litellm /v1/responses", f"{litellm}/v1/responses", stream_responses,
                     LITELLM_KEY, litellm_pid),
            ]  # fmt: skip
        if args.only:
            stream_cases = [c for c in stream_cases if re.search(args.only, c.name)]
        for case in stream_cases:
            if case.pid is not None and case.pid == litellm_pid and not case.note:
                why = refusal(case, streamed=True)
                if why is not None:
                    case.note = f"not served by LiteLLM: {why}"
                    progress(f"stream {case.name}: not served: {why}")
        delays = [0.0] if args.engine == "llama-cpp" else [0.0, args.stream_delay_ms]
        for delay in delays:
            if args.engine == "filler":
                set_token_delay(emulator, delay)
            for case in stream_cases:
                if case.note:
                    stream_rows.append((delay, Row(case, 0, error=case.note)))
                    continue
                for concurrency in stream_levels:
                    time.sleep(settle)
                    count = 10 if concurrency == 1 else 5 * concurrency
                    row = Row(case, concurrency)
                    try:
                        before = cpu_total(case.pid) if case.pid else 0.0
                        load = streams(
                            case.url, case.body, concurrency, count, case.key, case.headers
                        )
                        row.values = asyncio.run(load)
                        if case.pid:
                            quiesce(case.pid)
                            spent = cpu_total(case.pid) - before
                            row.values["cpu"] = spent * 1000 / max(row.values["streams"], 1)
                            row.values["rss"] = rss_mb(case.pid)
                    except (aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
                        row.error = f"{type(exc).__name__}: {exc}"
                    stream_rows.append((delay, row))
                    progress(f"stream {delay:g} ms {case.name} c={concurrency}: "
                             f"{row.values or row.error}")  # fmt: skip
        if args.engine == "filler":
            set_token_delay(emulator, 0)

        if args.profile:
            targets = [(c, "") for c in cases] + [(c, "stream") for c in stream_cases]
            for case, kind in targets:
                if case.pid != gw or case.note:
                    continue
                seconds = args.duration + 2
                if kind:
                    load = threading.Thread(
                        target=keep_streaming, args=(case, args.profile, seconds)
                    )
                else:
                    load = threading.Thread(
                        target=wrk,
                        args=(case.url, case.body, args.profile, seconds, case.key, case.headers),
                    )
                load.start()
                time.sleep(1)
                title = f"{kind or 'non-streaming'} {case.name} at concurrency {args.profile}"
                with tempfile.TemporaryDirectory() as where:
                    slug = re.sub(r"[^a-z0-9]+", "-", f"{kind} {case.name}".lower()).strip("-")
                    raw = (args.profile_dir or Path(where)) / f"{slug}-c{args.profile}.txt"
                    try:
                        user_before, system_before = cpu_seconds(gw)
                        profile(gw, args.duration, raw)
                        user_after, system_after = cpu_seconds(gw)
                        user, system = user_after - user_before, system_after - system_before
                        usage = f"  gateway CPU meanwhile: user {user:.2f} s, system {system:.2f} s"
                        profiles.append((title, [usage, *summarize(raw)]))
                    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
                        profiles.append((title, [f"  py-spy failed: {exc}"]))
                load.join()

    print(f"{started:%Y-%m-%d %H:%M} UTC; {machine()}")
    print(f"engine {args.engine}, gateway transport {args.transport}, gateway server: "
          f"{' + '.join(server_libs)}; {TOKENS} tokens per reply, {STREAM_TOKENS} per "
          f"stream; {args.duration:g} s per wrk row")  # fmt: skip
    for note in notes:
        print(f"note: {note}")
    print(f"\n{'non-streaming (wrk)':40} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'non-2xx':>7} {'CPU ms/req':>10} {'RSS MB':>7}")  # fmt: skip
    for row in rows:
        if row.error:
            print(f"{row.case.name:40} {conc(row)} {outcome(row.error)}")
            continue
        r = row.values
        cpu = f"{r['cpu']:10.2f} {r['rss']:7.0f}" if "cpu" in r else f"{'':10}"
        bad = int(r["errors"] + r["socket_errors"])
        print(f"{row.case.name:40} {row.concurrency:4d} {r['rps']:8.1f} {r['p50']:8.2f} "
              f"{r['p99']:8.2f} {bad:7d} {cpu}")  # fmt: skip
    for delay in delays:
        print(f"\n{f'streaming, {delay:g} ms per token':40} {'conc':>4} {'TTFT p50 ms':>11} "
              f"{'chunks/s/stream':>15} {'chunks/s all':>12} {'CPU ms/stream':>13} "
              f"{'ms/token':>8} {'RSS MB':>7}")  # fmt: skip
        for when, row in stream_rows:
            if when != delay:
                continue
            if row.error:
                print(f"{row.case.name:40} {conc(row)} {outcome(row.error)}")
                continue
            s = row.values
            per_token = s["cpu"] / STREAM_TOKENS if "cpu" in s else 0.0
            cpu = f"{s['cpu']:13.2f} {per_token:8.3f} {s['rss']:7.0f}" if "cpu" in s else ""
            print(f"{row.case.name:40} {row.concurrency:4d} {s['ttft']:11.2f} "
                  f"{s['rate']:15.1f} {s['all']:12.1f} {cpu}")  # fmt: skip
    for title, lines in profiles:
        print(f"\npy-spy, gateway process, {title}")
        print("\n".join(lines))
    if args.no_extras:
        return
    # What the usage ledger adds to each stored run (in process, SQLite and PostgreSQL).
    ledger_cost.report()
    # In this process: what quotas cost per request (bench/quota_cost.py).
    print()
    print("\n".join(quota_cost_report()))
    # Last: what the prefix index adds to a request's routing at 64 backends.
    print()
    print("\n".join(prefix_cost_report()))


if __name__ == "__main__":
    main()
