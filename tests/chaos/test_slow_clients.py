"""Slow clients: a client that reads its stream slowly makes the gateway read the backend
slowly too, so 200 such streams leave the gateway's memory flat."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import httpx

from tests.support.replicas import Replica
from tests.support.servers import running_emulator

MODEL = "llama3.1:8b"
STREAMS = 200
SECONDS = 30
#: Small enough that the kernel cannot hold a whole reply for a slow reader: what the
#: client does not read stays in the gateway (or, with back-pressure, in the backend).
RECEIVE_BUFFER = 4096


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def request(i: int, tokens: int | None = None) -> tuple[str, dict[str, object]]:
    """A long streamed reply (`tokens` long, else the emulator's 20 000) on one of the
    three surfaces."""
    prompt = f"tell me a very long story, number {i}"
    if i % 4 == 0:
        limit: dict[str, object] = {"options": {"num_predict": tokens}} if tokens else {}
        return "/api/generate", {"model": MODEL, "prompt": prompt, **limit}
    if i % 4 == 1:
        messages = [{"role": "user", "content": prompt}]
        limit = {"max_tokens": tokens} if tokens else {}
        return "/v1/chat/completions", {
            "model": MODEL, "messages": messages, "stream": True, **limit
        }  # fmt: skip
    limit = {"options": {"max_tokens": tokens}} if tokens else {}
    return "/gateway/generate/stream", {"model": MODEL, "prompt": prompt, **limit}


async def slow_reader(client: httpx.AsyncClient, url: str, i: int, got: list[int]) -> None:
    """Reads one piece a second until cancelled (the client leaves mid-reply)."""
    path, body = request(i)
    async with client.stream("POST", url + path, json=body) as reply:
        assert reply.status_code == 200, (path, await reply.aread())
        async for piece in reply.aiter_raw():
            got[i] += len(piece)
            await asyncio.sleep(1)


def test_200_slow_streams_keep_the_gateways_memory_flat(tmp_path: Path) -> None:
    """200 streams read at one chunk a second for 30 s: the gateway's RSS grows by less
    than 50 MB (each reply is 20 000 tokens long, over three backends)."""
    # 100 tokens/s, a fast GPU's pace; 20 000 of them, more than 30 s of reading takes.
    long_replies = ["--reply-tokens", "20000", "--token-delay-ms", "10"]
    with (
        running_emulator(models=(MODEL,), extra_args=long_replies) as first,
        running_emulator(models=(MODEL,), extra_args=long_replies) as second,
        running_emulator(models=(MODEL,), extra_args=long_replies) as third,
    ):
        for backend in (first, second, third):  # a fleet with the model loaded everywhere
            load = {"model": MODEL, "keep_alive": "1h"}
            assert httpx.post(f"{backend}/api/generate", json=load, timeout=30).status_code == 200
        replica = Replica(
            {
                "GATEWAY_BACKENDS": ",".join([first, second, third]),
                "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/gateway.db",
                "GATEWAY_LOG_LEVEL": "warning",
            }
        ).start()
        try:

            async def scenario() -> tuple[float, float, list[int]]:
                limits = httpx.Limits(max_connections=STREAMS + 10)
                transport = httpx.AsyncHTTPTransport(
                    limits=limits,
                    socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)],
                )
                async with httpx.AsyncClient(transport=transport, timeout=60) as client:
                    # Warm up: every surface's code loaded, one short run each, read whole.
                    for i in range(3):
                        path, body = request(i, tokens=20)
                        async with client.stream("POST", replica.url + path, json=body) as r:
                            assert r.status_code == 200, (path, await r.aread())
                            await r.aread()
                    baseline = rss_mb(replica.proc.pid)
                    got = [0] * STREAMS
                    until = time.monotonic() + SECONDS
                    readers = [
                        asyncio.create_task(slow_reader(client, replica.url, i, got))
                        for i in range(STREAMS)
                    ]
                    peak = baseline
                    while time.monotonic() < until and not any(r.done() for r in readers):
                        await asyncio.sleep(1)
                        peak = max(peak, rss_mb(replica.proc.pid))
                    failed = [r for r in readers if r.done()]
                    for reader in readers:
                        reader.cancel()
                    await asyncio.gather(*readers, return_exceptions=True)
                    for reader in failed:
                        reader.result()  # a stream that ended early says why
                    return baseline, peak, got

            baseline, peak, got = asyncio.run(scenario())
            # Still serving after 200 clients left mid-reply.
            assert httpx.get(replica.url + "/healthz", timeout=10).status_code == 200
        finally:
            replica.stop()
    print(f"\nRSS baseline {baseline:.0f} MB, peak {peak:.0f} MB, growth {peak - baseline:.1f} MB")
    silent = [(i, request(i)[0]) for i, n in enumerate(got) if n == 0]
    assert not silent, f"streams that received nothing: {silent}"
    assert peak - baseline < 50, f"RSS grew {peak - baseline:.1f} MB (from {baseline:.0f} MB)"
