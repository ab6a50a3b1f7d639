"""Compressed request bodies (`Content-Encoding: zstd` or `gzip`), decompressed at the edge.

Ollama accepts zstd bodies on `/v1/responses`, and agents send large, repetitive requests
(Codex's grow by the whole conversation each turn), so the gateway takes them on every
route. The limit of `GATEWAY_MAX_BODY_BYTES` holds for the decompressed body too: the
decompressor is asked for at most one byte more than the limit, so a small body that
inflates to gigabytes (a zip bomb) is a 413 after the limit's worth of work and memory,
never more. A body that is not what its encoding says is a 400. The route then reads the
plain body, as if it had come uncompressed (the guard of `json_guard` checks it too: this
middleware sits between the size limit and the guard).
"""

from __future__ import annotations

import io
import zlib

import zstandard
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.common.errors import error_response

__all__ = ["RequestDecompression", "TooLarge", "Undecodable", "decompress"]

ENCODINGS = ("zstd", "gzip")


class TooLarge(Exception):
    """The body inflates past the limit."""


class Undecodable(Exception):
    """The body is not what its encoding says."""


def _zstd(body: bytes, limit: int) -> bytes:
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(body), read_across_frames=True
        )
        with reader:
            out = reader.read(limit + 1)
    except zstandard.ZstdError as exc:
        raise Undecodable(f"the body is not valid zstd data ({exc})") from exc
    if len(out) > limit:
        raise TooLarge
    return bytes(out)


def _gzip(body: bytes, limit: int) -> bytes:
    out = bytearray()
    rest = body
    try:
        while rest:  # one member after another, as gzip allows
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out += inflater.decompress(rest, limit + 1 - len(out))
            if len(out) > limit or inflater.unconsumed_tail:
                raise TooLarge
            if not inflater.eof:
                raise Undecodable("the body is truncated gzip data")
            rest = inflater.unused_data
    except zlib.error as exc:
        raise Undecodable(f"the body is not valid gzip data ({exc})") from exc
    return bytes(out)


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """`body` decoded from `encoding` (zstd or gzip); `TooLarge` past `limit` bytes,
    `Undecodable` when it is not such data."""
    if encoding == "zstd":
        return _zstd(body, limit)
    return _gzip(body, limit)


class RequestDecompression:
    """Pure ASGI: a zstd or gzip body is read whole (the size limit before this bounds
    it), decompressed within `max_bytes` and handed on as a plain body."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = list(scope.get("headers") or [])
        encoding = next(
            (v.decode("latin-1").strip().lower() for k, v in headers if k == b"content-encoding"),
            None,
        )
        if encoding not in ENCODINGS:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        try:
            body = decompress(b"".join(chunks), encoding, self.max_bytes)
        except TooLarge:
            detail = f"the decompressed body is larger than the limit of {self.max_bytes} bytes"
            await error_response(Request(scope), 413, "Request body too large", detail)(
                scope, receive, send
            )
            return
        except Undecodable as exc:
            detail = f"Content-Encoding: {encoding}: {exc}"
            await error_response(Request(scope), 400, "Bad request body", detail)(
                scope, receive, send
            )
            return
        plain = [(k, v) for k, v in headers if k not in (b"content-encoding", b"content-length")]
        plain.append((b"content-length", str(len(body)).encode()))
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app({**scope, "headers": plain}, replay, send)
