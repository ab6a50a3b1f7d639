"""The test TCP proxy (tests/support/tcp_proxy.py): delay, throttle and cut, over loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.servers import answer_lifespan, serving_in_thread
from tests.support.tcp_proxy import TcpProxy, tcp_proxy

BIG = b"x" * 200_000


async def target_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """/big: 200 kB at once; /drip: a line every 50 ms for 2 s; else: `ok`."""
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    if scope["path"] == "/drip":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(40):
            await send({"type": "http.response.body", "body": b"%d\n" % i, "more_body": True})
            await asyncio.sleep(0.05)
        await send({"type": "http.response.body", "body": b""})
        return
    body = BIG if scope["path"] == "/big" else b"ok"
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def target() -> Iterator[str]:
    with serving_in_thread(target_app) as url:
        yield url


@pytest.fixture
def proxy(target: str) -> Iterator[TcpProxy]:
    port = int(target.rsplit(":", 1)[1])
    with tcp_proxy("127.0.0.1", port) as running:
        yield running


def timed_get(url: str) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    reply = httpx.get(url, timeout=10)
    return reply, time.perf_counter() - started


def test_it_forwards_both_ways(proxy: TcpProxy) -> None:
    reply, _ = timed_get(proxy.url + "/big")
    assert reply.status_code == 200 and reply.content == BIG
    assert proxy.accepted == 1


def test_delay_on_connect_and_per_chunk(proxy: TcpProxy) -> None:
    proxy.delay(on_connect_s=0.3)
    reply, elapsed = timed_get(proxy.url + "/")
    assert reply.text == "ok" and elapsed >= 0.3
    proxy.delay(per_chunk_s=0.2)
    reply, elapsed = timed_get(proxy.url + "/")
    assert reply.text == "ok" and elapsed >= 0.4  # the request's chunk, then the reply's
    proxy.delay()
    reply, elapsed = timed_get(proxy.url + "/")
    assert reply.text == "ok" and elapsed < 0.2


def test_throttle_measurably_slows_a_transfer(proxy: TcpProxy) -> None:
    _, fast = timed_get(proxy.url + "/big")
    proxy.throttle(400_000)  # 200 kB: about half a second
    reply, slow = timed_get(proxy.url + "/big")
    assert reply.content == BIG
    assert slow >= 0.4 and slow > 3 * fast
    proxy.throttle(None)
    _, again = timed_get(proxy.url + "/big")
    assert again < 0.3


def test_cut_ends_an_open_connection(proxy: TcpProxy) -> None:
    got: list[str] = []
    with (
        pytest.raises(httpx.TransportError),
        httpx.stream("GET", proxy.url + "/drip", timeout=10) as reply,
    ):
        for line in reply.iter_lines():
            got.append(line)
            if len(got) == 2:
                proxy.cut()
    assert got[:2] == ["0", "1"] and len(got) < 10
    deadline = time.monotonic() + 2
    while proxy.open_connections and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxy.open_connections == 0
    assert httpx.get(proxy.url + "/", timeout=5).text == "ok"  # new connections still work


def test_cut_can_refuse_new_connections_until_accepted_again(proxy: TcpProxy) -> None:
    proxy.cut(refuse_new=True)
    with pytest.raises(httpx.ConnectError):
        httpx.get(proxy.url + "/", timeout=5)
    proxy.accept_new()
    assert httpx.get(proxy.url + "/", timeout=5).text == "ok"
