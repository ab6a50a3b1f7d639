"""Ollama's own API at `/api`, served through the pool, so Ollama's clients work unchanged.

Requests are passed on as sent (unknown fields included) to the backend the pool picks
for their model; replies come back as the backend wrote them: status, error bodies and
NDJSON streams line by line. `/api/tags` and `/api/ps` are the union over the backends;
deletes and copies reach every backend that has the model. Generations and chats are
stored like any other run, as surface `ollama` (`GATEWAY_STORE_OLLAMA_API`).
"""

from __future__ import annotations

import asyncio
import json
import posixpath
import re
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.access import Principal
from app.api.auth import AdminDep, UserDep
from app.api.authorization import authorize_models
from app.api.deps import ManagerDep, Services, SettingsDep
from app.api.errors import ApiError
from app.api.shutdown import SHUTTING_DOWN, ShuttingDown, until_shutdown
from app.ollama import OllamaManager
from app.ollama.relay import Relayed, spec_of_body

router = APIRouter(include_in_schema=False)

JSON_TYPE = "application/json; charset=utf-8"
FORWARDED_HEADERS = {"content-type": "application/json"}
USER_PATHS = {"show", "embed", "embeddings"}
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

#: Ollama's API, path (under /api/) by path, with the methods each takes. Only these are
#: relayed: a backend's other paths (its admin or debug endpoints) are not the client's.
OLLAMA_PATHS: dict[str, frozenset[str]] = {
    **dict.fromkeys(
        ("generate", "chat", "embed", "embeddings", "show", "pull", "push", "create", "copy"),
        frozenset({"POST"}),
    ),
    "delete": frozenset({"DELETE"}),
    **dict.fromkeys(("tags", "ps", "version"), frozenset({"GET", "HEAD"})),
}
BLOB_PATH = re.compile(r"blobs/sha256[:-][0-9a-f]{64}")
BLOB_METHODS = frozenset({"HEAD", "POST"})


def ollama_path_methods(path: str) -> frozenset[str] | None:
    """The methods Ollama's API takes at `/api/<path>`; None when it is not Ollama's API.

    The path is taken as the client sent it, after percent-decoding: one with `.` or `..`
    segments, empty segments or a trailing slash is not one of Ollama's.
    """
    if posixpath.normpath(f"/api/{path}") != f"/api/{path}":
        return None
    if BLOB_PATH.fullmatch(path):
        return BLOB_METHODS
    return OLLAMA_PATHS.get(path)


def go_json(value: Any) -> bytes:
    """JSON as Go's encoding/json writes it: compact, with `<`, `>` and `&` escaped."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def json_object(content: bytes) -> dict[str, Any]:
    """The body as a JSON object, or {} (the backend answers for a body it cannot read)."""
    try:
        data = json.loads(content) if content else {}
    except (ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def model_of(body: dict[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = body.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def ending(request: Request) -> asyncio.Event:
    """Set when the gateway's shutdown grace has run out (see `app.api.shutdown`)."""
    services: Services = request.app.state.services
    return services.shutdown.ending


async def relayed_response(
    relayed: Relayed, request: Request, on_done: Callable[[], None] | None = None
) -> Response:
    """The backend's reply as the client's: streamed when it is NDJSON, else whole."""
    media_type = relayed.headers.get("content-type", "")
    headers = {k: v for k, v in relayed.headers.items() if k.lower() not in ("date", "server")}
    if "ndjson" not in media_type:
        content = await relayed.read()
        if on_done is not None:
            on_done()
        return Response(content, status_code=relayed.status, headers=headers)

    async def body() -> AsyncIterator[bytes]:
        try:
            async for piece in until_shutdown(relayed.body, ending(request)):
                yield piece
        except ShuttingDown:
            yield go_json({"error": SHUTTING_DOWN}) + b"\n"
        finally:
            await relayed.aclose()
            if on_done is not None:
                on_done()

    return StreamingResponse(body(), status_code=relayed.status, headers=headers)


@router.api_route("/", methods=["GET", "HEAD"])
async def root() -> PlainTextResponse:
    """`Ollama is running`, as Ollama answers its clients' liveness probe."""
    return PlainTextResponse("Ollama is running")


@router.api_route("/api/version", methods=["GET", "HEAD"])
async def version(request: Request, manager: ManagerDep, _: UserDep) -> Response:
    return await relayed_response(await manager.arelay(request.method, "/api/version"), request)


@router.get("/api/tags")
async def tags(manager: ManagerDep, principal: UserDep) -> Response:
    """Every backend's models, once each (those the key may use)."""
    models = [m for m in await manager.aunion("tags") if principal.allows(str(m.get("name")))]
    return Response(go_json({"models": models}), media_type=JSON_TYPE)


@router.get("/api/ps")
async def ps(manager: ManagerDep, principal: UserDep) -> Response:
    """The models loaded in memory on any backend (those the key may use)."""
    models = [m for m in await manager.aunion("ps") if principal.allows(str(m.get("name")))]
    return Response(go_json({"models": models}), media_type=JSON_TYPE)


async def _run(
    kind: Literal["generate", "chat"],
    request: Request,
    manager: OllamaManager,
    principal: Principal,
    store: bool,
) -> Response:
    content = await request.body()
    body = json_object(content)
    authorize_models(request, principal, [model_of(body, "model") or ""])
    record = spec_of_body(kind, body, "ollama") if store else None
    streamed = body.get("stream") is not False
    relayed = await manager.arelay(
        "POST",
        f"/api/{kind}",
        model=model_of(body, "model"),
        content=content,
        headers=FORWARDED_HEADERS,
        record=record,
        store_kind="stream" if streamed else kind,
        buffered=not streamed,
    )
    return await relayed_response(relayed, request)


@router.post("/api/generate")
async def generate(
    request: Request, manager: ManagerDep, settings: SettingsDep, principal: UserDep
) -> Response:
    return await _run("generate", request, manager, principal, settings.store_ollama_api)


@router.post("/api/chat")
async def chat(
    request: Request, manager: ManagerDep, settings: SettingsDep, principal: UserDep
) -> Response:
    return await _run("chat", request, manager, principal, settings.store_ollama_api)


@router.post("/api/pull")
async def pull(request: Request, manager: ManagerDep, _: AdminDep) -> Response:
    """Pulled on the backend that has the model (an update), else the least busy one."""
    content = await request.body()
    model = model_of(json_object(content), "model", "name")
    relayed = await manager.arelay(
        "POST", "/api/pull", model=model, content=content, headers=FORWARDED_HEADERS
    )
    return await relayed_response(relayed, request, on_done=manager.mark_inventory_stale)


async def _each(request: Request, manager: OllamaManager, path: str, *keys: str) -> Response:
    """Sent to every backend that has the model: the first success, else the first reply."""
    content = await request.body()
    model = model_of(json_object(content), *keys)
    if model is None:
        relayed = await manager.arelay(
            request.method, path, content=content, headers=FORWARDED_HEADERS
        )
        return await relayed_response(relayed, request)
    replies = await manager.arelay_each(
        request.method, path, model=model, content=content, headers=FORWARDED_HEADERS
    )
    _, status, headers, reply = next((r for r in replies if r[1] < 300), replies[0])
    headers = {k: v for k, v in headers.items() if k.lower() not in ("date", "server")}
    return Response(reply, status_code=status, headers=headers)


@router.delete("/api/delete")
async def delete(request: Request, manager: ManagerDep, _: AdminDep) -> Response:
    return await _each(request, manager, "/api/delete", "model", "name")


@router.post("/api/copy")
async def copy(request: Request, manager: ManagerDep, _: AdminDep) -> Response:
    return await _each(request, manager, "/api/copy", "source")


@router.api_route("/api/{path:path}", methods=ALL_METHODS)
async def passthrough(
    path: str, request: Request, manager: ManagerDep, principal: UserDep
) -> Response:
    """show, embed, embeddings and the rest of Ollama's API: to a backend that has the
    body's model.

    show, embed and embeddings are a user key's (for its models); anything else (push,
    create, blobs) changes a backend and needs an admin key. A path that is not Ollama's
    API is a 404 (gin's plain text, as Ollama answers), a known one with another method
    a 405; neither reaches a backend.
    """
    methods = ollama_path_methods(path)
    if methods is None:
        raise StarletteHTTPException(404)
    if request.method not in methods:
        raise StarletteHTTPException(405)
    content = await request.body()
    body = json_object(content)
    if path in USER_PATHS:
        authorize_models(request, principal, [model_of(body, "model", "name") or ""])
    elif not principal.is_admin:
        raise ApiError(403, "Forbidden", f"/api/{path} needs an admin key")
    query = f"?{request.url.query}" if request.url.query else ""
    relayed = await manager.arelay(
        request.method,
        f"/api/{path}{query}",
        model=model_of(body, "model", "name"),
        content=content or None,
        headers=FORWARDED_HEADERS if content else None,
    )
    return await relayed_response(relayed, request)
