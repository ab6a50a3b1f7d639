"""`OllamaClient`: typed async calls to one Ollama server.

The calls go out on aiohttp (`app.backends.aiohttp_session`; the default) or on httpx's own
transport (`GATEWAY_HTTP_TRANSPORT=httpx`), with the same replies and the same errors.

Why a session per backend and per event loop: an `aiohttp.ClientSession` (or an
`httpx.AsyncClient`) keeps a pool of keep-alive connections, and those connections belong
to the event loop that opened them. The gateway calls the core from uvicorn's loop while
the seed's sync methods run on a private loop thread, so each loop gets its own, created
on first use.
"""

# ruff: noqa: ASYNC109 - `timeout` here is a per-operation timeout, not a deadline.

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import httpx
import orjson

from app.backends import aiohttp_session
from app.backends.aiohttp_session import Failure
from app.backends.errors import BackendError, BackendTimeout, BackendUnavailable, StreamInterrupted
from app.observability import telemetry
from app.observability.request_context import request_id

__all__ = ["OllamaClient", "RelayResponse"]

JSONDict = dict[str, Any]
FinalObserver = Callable[[str, JSONDict], None]
"""Told each finished run's model and Ollama's final object (with `load_duration`)."""
TRANSPORTS = ("httpx", "aiohttp")

logger = logging.getLogger(__name__)


@dataclass
class RelayResponse:
    """A backend reply passed through unparsed: status, headers and the body's bytes.

    `body` must be consumed or `aclose()` called, so the connection returns to the pool.
    """

    status: int
    headers: dict[str, str]
    body: AsyncIterator[bytes]
    _close: Callable[[], Awaitable[None]]

    async def aclose(self) -> None:
        await self._close()


class _Reply(Protocol):
    """A reply whose status and headers arrived, its body still to read (either transport).

    `pieces` and `read` raise the transport's own errors (see `_failure`); `aclose` gives
    the connection back to the pool, or closes it when the body was not read to its end.
    """

    @property
    def status(self) -> int: ...

    def headers(self) -> dict[str, str]: ...

    def pieces(self) -> AsyncIterator[bytes]: ...

    async def read(self) -> bytes: ...

    async def aclose(self) -> None: ...


class _AiohttpReply:
    __slots__ = ("_response", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status

    def headers(self) -> dict[str, str]:
        return aiohttp_session.reply_headers(self._response)

    def pieces(self) -> AsyncIterator[bytes]:
        return aiohttp_session.pieces(self._response)

    async def read(self) -> bytes:
        return await self._response.read()

    async def aclose(self) -> None:
        self._response.release()


class _HttpxReply:
    __slots__ = ("_raw", "_response", "status")

    def __init__(self, response: httpx.Response, *, raw: bool) -> None:
        self._response = response
        self._raw = raw
        self.status = response.status_code

    def headers(self) -> dict[str, str]:
        return {
            k: v
            for k, v in self._response.headers.items()
            if k.lower() not in aiohttp_session.HOP_BY_HOP
        }

    def pieces(self) -> AsyncIterator[bytes]:
        return self._response.aiter_raw() if self._raw else self._response.aiter_bytes()

    async def read(self) -> bytes:
        return await self._response.aread()

    async def aclose(self) -> None:
        await self._response.aclose()


class OllamaClient:
    """One Ollama server: `/api/*` calls with errors mapped onto `app.backends.errors`.

    Streaming calls are async generators of decoded NDJSON objects; an `{"error": ...}`
    line mid-stream raises `BackendError` with Ollama's text, and a connection that drops
    before the final `done` line raises `StreamInterrupted`. Consumers that stop early
    should close the generator (`contextlib.aclosing`) so the HTTP response is released.

    `token`, when given, goes with every request to this server only
    (`Authorization: Bearer`); it is kept private and never shown or logged. `on_final`
    is told the model and final object of each generation, chat and embedding.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 300.0,
        connect_timeout: float = 5.0,
        max_connections: int = 600,
        transport: str = "httpx",
        token: str | None = None,
        on_final: FinalObserver | None = None,
    ) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
        self.transport = transport
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self._limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=aiohttp_session.KEEPALIVE_SECONDS,
        )
        self._clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
        self._lock = threading.Lock()
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._default_timeout = self._aiohttp_timeout(None)
        self._ssl: ssl.SSLContext | None = None
        self.on_final = on_final

    def __repr__(self) -> str:
        return f"OllamaClient({self.base_url!r})"

    # -- connection management -------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        with self._lock:
            for stale in [lp for lp in self._clients if lp.is_closed()]:
                # Its loop is gone, so its sockets can no longer be closed politely.
                del self._clients[stale]
            client = self._clients.get(loop)
            if client is None:
                client = httpx.AsyncClient(
                    base_url=self.base_url,
                    timeout=self._timeout(None),
                    limits=self._limits,
                    headers=self._headers,
                    trust_env=False,
                    event_hooks={"request": [_pass_request_id]},
                )
                # Tracing on: a client span per request, `traceparent` sent to the backend.
                telemetry.instrument_http_client(client)
                self._clients[loop] = client
            return client

    def _session(self) -> aiohttp.ClientSession:
        """This loop's aiohttp session for this backend (made on first use)."""
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is not None and not session.closed:
            return session
        with self._lock:
            for stale in [lp for lp in self._sessions if lp.is_closed()]:
                # Its loop is gone, so its sockets can no longer be closed politely; the
                # session is marked closed (no warning of an unclosed one when it goes).
                self._sessions.pop(stale).detach()
            session = self._sessions.get(loop)
            if session is None or session.closed:
                if self._ssl is None and self.base_url.startswith("https:"):
                    # The CA bundle httpx verifies with (certifi's), as before.
                    self._ssl = httpx.create_ssl_context(trust_env=False)
                session = aiohttp_session.new_session(self.max_connections, self._ssl)
                self._sessions[loop] = session
            return session

    def _timeout(self, total: float | None) -> httpx.Timeout:
        seconds = self.timeout if total is None else total
        return httpx.Timeout(seconds, connect=min(self.connect_timeout, seconds))

    def _aiohttp_timeout(self, total: float | None) -> aiohttp.ClientTimeout:
        """`_timeout` in aiohttp's terms: `seconds` for each read and for getting a
        connection from the pool, `connect_timeout` (at most `seconds`) to connect."""
        seconds = self.timeout if total is None else total
        return aiohttp.ClientTimeout(
            total=None,
            connect=seconds,
            sock_connect=min(self.connect_timeout, seconds),
            sock_read=seconds,
        )

    async def aclose(self) -> None:
        """Close the pooled connections of every loop this client was used on.

        The current loop's client and session are closed here; those bound to another
        loop that is still running are closed on that loop; those whose loop has closed
        are dropped.
        """
        with self._lock:
            closers: list[tuple[asyncio.AbstractEventLoop, Callable[[], Awaitable[None]]]] = [
                (loop, client.aclose) for loop, client in self._clients.items()
            ]
            closers += [(loop, session.close) for loop, session in self._sessions.items()]
            self._clients.clear()
            self._sessions.clear()
        current = asyncio.get_running_loop()
        for loop, close in closers:
            if loop is current:
                await close()
            elif loop.is_running() and not loop.is_closed():
                asyncio.run_coroutine_threadsafe(_awaited(close), loop)

    # -- one exchange ----------------------------------------------------------------

    async def _open(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None,
        headers: Mapping[str, str] | None,
        timeout: float | None,
        raw: bool = False,
    ) -> _Reply:
        """Send a request and return its reply once the status and headers arrived (`raw`:
        its body's bytes as sent, not decoded). A request that fails is a `BackendError`."""
        if self.transport == "httpx":
            http = self._http()
            request = http.build_request(
                method,
                path,
                content=content,
                headers=headers,
                timeout=self._timeout(timeout),
            )
            try:
                return _HttpxReply(await http.send(request, stream=True), raw=raw)
            except httpx.HTTPError as exc:
                raise self._map_transport_error(exc) from exc

        url = self.base_url + path
        sent = {**self._headers, **headers} if headers else dict(self._headers)
        current = request_id.get()
        if current is not None:
            sent["X-Request-ID"] = current
        span = telemetry.start_http_client_span(method, url, sent)
        try:
            response = await self._session().request(
                method,
                url,
                data=content,
                headers=sent,
                timeout=self._default_timeout
                if timeout is None
                else self._aiohttp_timeout(timeout),
                allow_redirects=False,
                auto_decompress=not raw,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            telemetry.end_http_client_span(span, error=exc)
            raise self._map_transport_error(exc) from exc
        except BaseException as exc:  # cancelled: the span still ends
            telemetry.end_http_client_span(span, error=exc)
            raise
        telemetry.end_http_client_span(span, response.status)
        return _AiohttpReply(response)

    # -- plain requests --------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, bytes]:
        """The reply's status and whole body; an error status raises (`_status_error`)."""
        reply = await self._open(
            method,
            path,
            content=_dumps(json_body) if json_body is not None else None,
            headers=JSON_HEADERS if json_body is not None else None,
            timeout=timeout,
        )
        try:
            content = await reply.read()
        except _TRANSPORT_ERRORS as exc:
            raise self._map_transport_error(exc) from exc
        finally:
            await reply.aclose()
        if reply.status >= 400:
            raise self._status_error(reply.status, content.decode(errors="replace"))
        return reply.status, content

    async def ping(self, timeout: float | None = None) -> bool:
        """True when the server answers `GET /` with a success status."""
        try:
            await self._request("GET", "/", timeout=timeout)
        except BackendError:
            return False
        return True

    async def version(self) -> str:
        reply = await self._request("GET", "/api/version")
        return str(self._json(reply).get("version", ""))

    async def tags(self, timeout: float | None = None) -> list[JSONDict]:
        """The installed models (`GET /api/tags`), newest first as Ollama sorts them."""
        reply = await self._request("GET", "/api/tags", timeout=timeout)
        return list(self._json(reply).get("models") or [])

    async def ps(self) -> list[JSONDict]:
        """The models loaded in memory (`GET /api/ps`)."""
        reply = await self._request("GET", "/api/ps")
        return list(self._json(reply).get("models") or [])

    async def show(self, model: str, *, verbose: bool = False) -> JSONDict:
        body: JSONDict = {"model": model}
        if verbose:
            body["verbose"] = True
        return self._json(await self._request("POST", "/api/show", json_body=body))

    async def delete(self, model: str) -> None:
        await self._request("DELETE", "/api/delete", json_body={"model": model})

    async def copy(self, source: str, destination: str) -> None:
        await self._request(
            "POST", "/api/copy", json_body={"source": source, "destination": destination}
        )

    async def embed(self, model: str, inputs: str | list[str], **extra: Any) -> JSONDict:
        body: JSONDict = {"model": model, "input": inputs, **extra}
        return self._observed(
            body, self._json(await self._request("POST", "/api/embed", json_body=body))
        )

    async def generate(
        self, payload: Mapping[str, Any], *, timeout: float | None = None
    ) -> JSONDict:
        """`POST /api/generate` with `stream: false`: one object holding the whole reply."""
        body = {**payload, "stream": False}
        reply = await self._request("POST", "/api/generate", json_body=body, timeout=timeout)
        return self._observed(body, self._json(reply))

    async def chat(self, payload: Mapping[str, Any], *, timeout: float | None = None) -> JSONDict:
        """`POST /api/chat` with `stream: false`."""
        body = {**payload, "stream": False}
        reply = await self._request("POST", "/api/chat", json_body=body, timeout=timeout)
        return self._observed(body, self._json(reply))

    # -- streams ---------------------------------------------------------------------

    async def stream(
        self,
        path: str,
        payload: Mapping[str, Any],
        *,
        timeout: float | None = None,
        require_done: bool = False,
    ) -> AsyncGenerator[JSONDict, None]:
        """POST `payload` (with `stream: true`) and yield each NDJSON object as it arrives
        (lines end at `\\n`; blank ones are skipped).

        `require_done` makes a stream that ends without a `"done": true` line an error:
        generate and chat always finish with one, so its absence means a cut connection.
        """
        body = {**payload, "stream": True}
        saw_done = False
        received = 0
        reply = await self._open(
            "POST", path, content=_dumps(body), headers=JSON_HEADERS, timeout=timeout
        )
        try:
            if reply.status >= 400:
                try:
                    text = (await reply.read()).decode(errors="replace")
                except _TRANSPORT_ERRORS as exc:
                    raise self._map_transport_error(exc) from exc
                raise self._status_error(reply.status, text)
            status = reply.status
            pending = b""
            try:
                async for piece in reply.pieces():
                    if pending:
                        piece = pending + piece
                    *lines, pending = piece.split(b"\n")
                    for line in lines:
                        if not line.strip():
                            continue
                        obj = self._line(status, line)
                        if "error" in obj:
                            raise BackendError(str(obj["error"]), status=200, url=self.base_url)
                        received += 1
                        if obj.get("done") is True:
                            saw_done = True
                            self._observed(body, obj)
                        yield obj
            except _TRANSPORT_ERRORS as exc:
                if received and _failure(exc) == "cut":
                    self._log_transport_error("mid-stream", exc)
                    raise StreamInterrupted(
                        "the backend closed the connection mid-reply",
                        status=200,
                        url=self.base_url,
                    ) from exc
                raise self._map_transport_error(exc) from exc
            if pending.strip():  # a last line without its newline
                obj = self._line(status, pending)
                if "error" in obj:
                    raise BackendError(str(obj["error"]), status=200, url=self.base_url)
                if obj.get("done") is True:
                    saw_done = True
                    self._observed(body, obj)
                yield obj
        finally:
            await reply.aclose()
        if require_done and not saw_done:
            raise StreamInterrupted(
                f"stream from backend {self.base_url} ended before its final chunk",
                status=200,
                url=self.base_url,
            )

    def generate_stream(
        self, payload: Mapping[str, Any], *, timeout: float | None = None
    ) -> AsyncGenerator[JSONDict, None]:
        """Streamed `POST /api/generate`: chunks, the last one `done` with the metrics."""
        return self.stream("/api/generate", payload, timeout=timeout, require_done=True)

    def chat_stream(
        self, payload: Mapping[str, Any], *, timeout: float | None = None
    ) -> AsyncGenerator[JSONDict, None]:
        """Streamed `POST /api/chat`."""
        return self.stream("/api/chat", payload, timeout=timeout, require_done=True)

    def pull(self, model: str, *, timeout: float | None = None) -> AsyncGenerator[JSONDict, None]:
        """Streamed `POST /api/pull`: progress objects up to `{"status": "success"}`."""
        return self.stream("/api/pull", {"model": model}, timeout=timeout)

    async def relay(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> RelayResponse:
        """Send a request as given and return the reply unparsed, streaming its body (the
        bytes as the backend sent them, each piece passed on as it arrives).

        For the `/api` passthrough: error statuses are returned, not raised, because the
        caller forwards them to its own client; only transport failures raise.
        """
        reply = await self._open(
            method, path, content=content, headers=headers, timeout=timeout, raw=True
        )
        status = reply.status

        async def body() -> AsyncGenerator[bytes, None]:
            try:
                async for piece in reply.pieces():
                    yield piece
            except _TRANSPORT_ERRORS as exc:
                self._log_transport_error("mid-reply", exc)
                raise StreamInterrupted(
                    "the backend closed the connection mid-reply",
                    status=status,
                    url=self.base_url,
                ) from exc
            finally:
                await reply.aclose()

        return RelayResponse(
            status=status, headers=reply.headers(), body=body(), _close=reply.aclose
        )

    # -- helpers ---------------------------------------------------------------------

    def _observed(self, body: Mapping[str, Any], final: JSONDict) -> JSONDict:
        """`final`, after `on_final` was told of it (for a request naming a model)."""
        model = body.get("model")
        if self.on_final is not None and isinstance(model, str) and "load_duration" in final:
            try:
                self.on_final(model, final)
            except Exception:  # bookkeeping must not fail a run
                logger.exception("backend %s: recording a finished run failed", self.base_url)
        return final

    def _json(self, reply: tuple[int, bytes]) -> JSONDict:
        """The JSON object a whole reply (status, body) holds. A `BackendError` (with the
        reply's status, naming what came instead) when it is not JSON, or JSON but not an
        object."""
        status, content = reply
        try:
            data = _loads(content)
        except ValueError as exc:  # json.JSONDecodeError, or bytes that are not text
            text = content.decode(errors="replace")
            raise BackendError(
                f"backend sent a reply that is not JSON: {text[:200]!r}",
                status=status,
                url=self.base_url,
            ) from exc
        if not isinstance(data, dict):
            raise BackendError(
                "backend sent JSON that is not an object", status=status, url=self.base_url
            )
        return data

    def _line(self, status: int, line: bytes) -> JSONDict:
        """The JSON object one line of an NDJSON stream holds (bytes that are not UTF-8
        read as U+FFFD); a `BackendError` as `_json` has it, quoting the line."""
        try:
            data = _loads_line(line)
        except ValueError as exc:
            text = line.decode(errors="replace")
            raise BackendError(
                f"backend sent a line that is not JSON: {text[:200]!r}",
                status=status,
                url=self.base_url,
            ) from exc
        if not isinstance(data, dict):
            text = line.decode(errors="replace")
            raise BackendError(
                f"backend sent a line that is not a JSON object: {text[:200]!r}",
                status=status,
                url=self.base_url,
            )
        return data

    def _status_error(self, status: int, text: str) -> BackendError:
        message = text.strip()
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict) and "error" in data:
            message = str(data["error"])
        return BackendError(message or f"HTTP {status}", status=status, url=self.base_url)

    def _log_transport_error(self, during: str, exc: BaseException) -> None:
        """The library's own words go to the log; clients get the gateway's. A backend that
        cannot be reached is logged at debug level: the health checks meet it every round,
        and `/readyz` and `/gateway/backends` already say it is down."""
        level = logging.DEBUG if _failure(exc) == "connect" else logging.WARNING
        logger.log(level, "backend %s: %s: %s: %s", self.base_url, during, type(exc).__name__, exc)

    def _map_transport_error(self, exc: BaseException) -> BackendError:
        """A transport failure in the gateway's words (see `_log_transport_error`)."""
        self._log_transport_error("request", exc)
        kind = _failure(exc)
        if kind == "connect":
            return BackendUnavailable("could not connect to the backend", url=self.base_url)
        if kind == "timeout":
            return BackendTimeout("the backend did not answer in time", url=self.base_url)
        if kind == "cut":
            return BackendError("the backend closed the connection mid-reply", url=self.base_url)
        return BackendError("the request to the backend failed", url=self.base_url)


_TRANSPORT_ERRORS = (httpx.HTTPError, aiohttp.ClientError, TimeoutError)
"""What either transport raises when an exchange fails (sorted by `_failure`)."""


def _failure(exc: BaseException) -> Failure:
    """The kind of a transport failure, httpx's or aiohttp's (see
    `aiohttp_session.failure_kind`)."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return "connect"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        return "cut"
    return aiohttp_session.failure_kind(exc) or "other"


async def _awaited(close: Callable[[], Awaitable[None]]) -> None:
    await close()


async def _pass_request_id(request: httpx.Request) -> None:
    """Send the id of the request being served along (`X-Request-ID`), for tracing."""
    current = request_id.get()
    if current is not None:
        request.headers["X-Request-ID"] = current


JSON_HEADERS = {"content-type": "application/json"}


def _dumps(value: Mapping[str, Any]) -> bytes:
    """A request body: orjson's bytes (compact, as httpx's `json=` would send them, in a
    fraction of the time); what orjson will not write (integers past 64 bits, keys that are
    not text) goes through `json`, NaN included."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _loads_line(line: bytes) -> Any:
    """One NDJSON line read as `_loads` reads a reply, its bytes that are not UTF-8 as
    U+FFFD (as a line decoded to text before parsing was)."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return json.loads(line.decode(errors="replace"))


def _loads(content: bytes | str) -> Any:
    """A reply (or one of its lines) read by orjson; what it refuses and `json` takes (NaN,
    integers past 64 bits, lone surrogates) by `json`, so a reply means what it meant."""
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return json.loads(content)
