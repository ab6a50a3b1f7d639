"""`OllamaClient`: typed async calls to one Ollama server.

Why a client per backend and per event loop: an `httpx.AsyncClient` keeps a pool of
keep-alive connections, and those connections belong to the event loop that opened them.
The gateway calls the core from uvicorn's loop while the seed's sync methods run on a
private loop thread, so each loop gets its own pooled client, created on first use.
"""

# ruff: noqa: ASYNC109 - `timeout` here is httpx's per-operation timeout, not a deadline.

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

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
    _response: httpx.Response

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
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}
        self._lock = threading.Lock()
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
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
                    transport=self._make_transport(),
                )
                # Tracing on: a client span per request, `traceparent` sent to the backend.
                telemetry.instrument_http_client(client)
                self._clients[loop] = client
            return client

    def _make_transport(self) -> httpx.AsyncBaseTransport | None:
        """httpx's own (None), or aiohttp under httpx's API (`httpx-aiohttp`)."""
        if self.transport == "httpx":
            return None
        from app.backends.aiohttp_transport import KeepingTransport

        return KeepingTransport(self._limits)

    def _timeout(self, total: float | None) -> httpx.Timeout:
        seconds = self.timeout if total is None else total
        return httpx.Timeout(seconds, connect=min(self.connect_timeout, seconds))

    async def aclose(self) -> None:
        """Close the pooled connections of every loop this client was used on.

        The current loop's client is closed here; a client bound to another loop that is
        still running is closed on that loop; one whose loop has closed is dropped.
        """
        with self._lock:
            clients = list(self._clients.items())
            self._clients.clear()
        current = asyncio.get_running_loop()
        for loop, client in clients:
            if loop is current:
                await client.aclose()
            elif loop.is_running() and not loop.is_closed():
                asyncio.run_coroutine_threadsafe(client.aclose(), loop)

    # -- plain requests --------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        try:
            response = await self._http().request(
                method,
                path,
                content=_dumps(json_body) if json_body is not None else None,
                headers=JSON_HEADERS if json_body is not None else None,
                timeout=self._timeout(timeout),
            )
        except httpx.HTTPError as exc:
            raise self._map_transport_error(exc) from exc
        if response.status_code >= 400:
            raise self._status_error(response.status_code, response.text)
        return response

    async def ping(self, timeout: float | None = None) -> bool:
        """True when the server answers `GET /` with a success status."""
        try:
            await self._request("GET", "/", timeout=timeout)
        except BackendError:
            return False
        return True

    async def version(self) -> str:
        response = await self._request("GET", "/api/version")
        return str(self._json(response).get("version", ""))

    async def tags(self, timeout: float | None = None) -> list[JSONDict]:
        """The installed models (`GET /api/tags`), newest first as Ollama sorts them."""
        response = await self._request("GET", "/api/tags", timeout=timeout)
        return list(self._json(response).get("models") or [])

    async def ps(self) -> list[JSONDict]:
        """The models loaded in memory (`GET /api/ps`)."""
        response = await self._request("GET", "/api/ps")
        return list(self._json(response).get("models") or [])

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
        """POST `payload` (with `stream: true`) and yield each NDJSON object as it arrives.

        `require_done` makes a stream that ends without a `"done": true` line an error:
        generate and chat always finish with one, so its absence means a cut connection.
        """
        body = {**payload, "stream": True}
        saw_done = False
        received = 0
        try:
            async with self._http().stream(
                "POST",
                path,
                content=_dumps(body),
                headers=JSON_HEADERS,
                timeout=self._timeout(timeout),
            ) as response:
                if response.status_code >= 400:
                    text = (await response.aread()).decode(errors="replace")
                    raise self._status_error(response.status_code, text)
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    obj = self._json(response, line)
                    if "error" in obj:
                        raise BackendError(str(obj["error"]), status=200, url=self.base_url)
                    received += 1
                    if obj.get("done") is True:
                        saw_done = True
                        self._observed(body, obj)
                    yield obj
        except httpx.HTTPError as exc:
            if received and isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
                self._log_transport_error("mid-stream", exc)
                raise StreamInterrupted(
                    "the backend closed the connection mid-reply",
                    status=200,
                    url=self.base_url,
                ) from exc
            raise self._map_transport_error(exc) from exc
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
        """Send a request as given and return the reply unparsed, streaming its body.

        For the `/api` passthrough: error statuses are returned, not raised, because the
        caller forwards them to its own client; only transport failures raise.
        """
        http = self._http()
        request = http.build_request(
            method,
            path,
            content=content,
            headers=dict(headers or {}),
            timeout=self._timeout(timeout),
        )
        try:
            response = await http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._map_transport_error(exc) from exc

        async def body() -> AsyncGenerator[bytes, None]:
            try:
                async for piece in response.aiter_raw():
                    yield piece
            except httpx.HTTPError as exc:
                self._log_transport_error("mid-reply", exc)
                raise StreamInterrupted(
                    "the backend closed the connection mid-reply",
                    status=response.status_code,
                    url=self.base_url,
                ) from exc
            finally:
                await response.aclose()

        hop_by_hop = {"connection", "keep-alive", "transfer-encoding", "content-length"}
        return RelayResponse(
            status=response.status_code,
            headers={k: v for k, v in response.headers.items() if k.lower() not in hop_by_hop},
            body=body(),
            _response=response,
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

    def _json(self, response: httpx.Response, line: str | None = None) -> JSONDict:
        """The JSON object the backend sent: the whole of `response`, or with `line` that
        one line of its NDJSON stream. A `BackendError` (with the response's status,
        naming what came instead) when it is not JSON, or JSON but not an object."""
        try:
            data = _loads(response.content if line is None else line)
        except ValueError as exc:  # json.JSONDecodeError, or bytes that are not text
            sent = (
                f"a reply that is not JSON: {response.text[:200]!r}"
                if line is None
                else f"a line that is not JSON: {line[:200]!r}"
            )
            raise BackendError(
                f"backend sent {sent}", status=response.status_code, url=self.base_url
            ) from exc
        if not isinstance(data, dict):
            sent = (
                "JSON that is not an object"
                if line is None
                else f"a line that is not a JSON object: {line[:200]!r}"
            )
            raise BackendError(
                f"backend sent {sent}", status=response.status_code, url=self.base_url
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
        level = (
            logging.DEBUG
            if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
            else logging.WARNING
        )
        logger.log(level, "backend %s: %s: %s: %s", self.base_url, during, type(exc).__name__, exc)

    def _map_transport_error(self, exc: httpx.HTTPError) -> BackendError:
        """A transport failure in the gateway's words (see `_log_transport_error`)."""
        self._log_transport_error("request", exc)
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return BackendUnavailable("could not connect to the backend", url=self.base_url)
        if isinstance(exc, httpx.TimeoutException):
            return BackendTimeout("the backend did not answer in time", url=self.base_url)
        if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
            return BackendError("the backend closed the connection mid-reply", url=self.base_url)
        return BackendError("the request to the backend failed", url=self.base_url)


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


def _loads(content: bytes | str) -> Any:
    """A reply (or one of its lines) read by orjson; what it refuses and `json` takes (NaN,
    integers past 64 bits, lone surrogates) by `json`, so a reply means what it meant."""
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return json.loads(content)
