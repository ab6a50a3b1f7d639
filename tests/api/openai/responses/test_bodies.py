"""Request bodies of `/v1/responses`: zstd and gzip as well as plain, within the size limit
once decompressed (a zip bomb is a 413 after the limit's worth of work), and the edge's
checks (NUL, deep JSON) applied to the decompressed body; errors in OpenAI's shape."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import zstandard

from app.api.edge.content_encoding import TooLarge, decompress
from app.main import create_app
from tests.api.conftest import gateway_settings
from tests.support.servers import serving_in_thread

LIMIT = 64 * 1024
BODY = {"model": "llama3.1:8b", "input": "Hello in a compressed body", "store": False}


@pytest.fixture
def gateway_url(emulator_url: str, tmp_path: Path) -> Iterator[str]:
    settings = gateway_settings([emulator_url], tmp_path, max_body_bytes=LIMIT)
    with serving_in_thread(create_app(settings)) as url:
        yield url


def post(url: str, data: bytes, encoding: str | None) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if encoding:
        headers["content-encoding"] = encoding
    return httpx.post(f"{url}/v1/responses", content=data, headers=headers, timeout=30)


def error_of(reply: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_zstd_and_gzip_bodies_are_answered_like_plain_ones(gateway_url: str) -> None:
    raw = json.dumps(BODY).encode()
    plain = post(gateway_url, raw, None)
    assert plain.status_code == 200, plain.text
    texts = {plain.json()["output"][0]["content"][0]["text"]}
    for encoding, data in (
        ("zstd", zstandard.ZstdCompressor().compress(raw)),
        ("gzip", gzip.compress(raw)),
        ("gzip", gzip.compress(raw[:20]) + gzip.compress(raw[20:])),  # two members
    ):
        reply = post(gateway_url, data, encoding)
        assert reply.status_code == 200, (encoding, reply.text)
        texts.add(reply.json()["output"][0]["content"][0]["text"])
    assert len(texts) == 1


def test_a_body_that_inflates_past_the_limit_is_413_at_once(gateway_url: str) -> None:
    padding = " " * (32 * 1024 * 1024)  # 32 MiB of JSON whitespace, 512 times the limit
    bomb_text = ('{"model": "llama3.1:8b", "input": "x"' + padding + "}").encode()
    for encoding, bomb in (
        ("zstd", zstandard.ZstdCompressor(level=3).compress(bomb_text)),
        ("gzip", gzip.compress(bomb_text, compresslevel=9)),
    ):
        assert len(bomb) < LIMIT  # small on the wire: only its inflated size is over
        reply = post(gateway_url, bomb, encoding)
        assert reply.status_code == 413, reply.text
        assert str(LIMIT) in error_of(reply)["message"]
        # the limit's worth of memory, not 32 MiB of it
        tracemalloc.start()
        with pytest.raises(TooLarge):
            decompress(bomb, encoding, LIMIT)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 8 * LIMIT, (encoding, peak)
    del bomb_text


def test_bodies_that_are_not_what_they_say_are_400(gateway_url: str) -> None:
    for encoding in ("zstd", "gzip"):
        reply = post(gateway_url, b"not compressed at all", encoding)
        assert reply.status_code == 400, reply.text
        assert error_of(reply)["message"].startswith(f"Content-Encoding: {encoding}")
    truncated = gzip.compress(json.dumps(BODY).encode())[:-12]
    assert post(gateway_url, truncated, "gzip").status_code == 400


def test_the_edge_checks_the_decompressed_body(gateway_url: str) -> None:
    nul = json.dumps({**BODY, "input": "a\u0000b"}).encode()
    reply = post(gateway_url, zstandard.ZstdCompressor().compress(nul), "zstd")
    assert reply.status_code == 400 and "NUL" in error_of(reply)["message"], reply.text
    deep = ('{"model": "m", "input": ' + "[" * 100 + "]" * 100 + "}").encode()
    reply = post(gateway_url, gzip.compress(deep), "gzip")
    assert reply.status_code == 400 and "nests deeper" in error_of(reply)["message"]
