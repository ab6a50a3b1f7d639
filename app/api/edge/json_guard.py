"""The edge check of requests, on every surface, before any route reads them.

NUL in the path or the query string (`%00`) is refused at once: no id, name or filter
holds one, and PostgreSQL cannot even compare text with one. Two kinds of JSON body are
refused too, whatever the route:

- **Nested deeper than `max_json_depth`** (`GATEWAY_MAX_JSON_DEPTH`, default 64): no API
  of the gateway's needs more, and a parser (Python's, or a backend's) can run out of
  stack on far less than the size limit allows. Answered 400.
- **Text no database can hold**: NUL (PostgreSQL refuses it in text and JSON) and lone
  surrogates (`"\\ud800"`: valid JSON, not UTF-8) in any string or key. Refused here, a
  run is never answered 200 and then lost when it is stored. Answered 422 on `/gateway`
  (problem details naming the field), 400 on `/api` and `/v1`, in their own shapes.

Most bodies are checked without parsing: a body with no more brackets than the depth
limit cannot be too deep, and one with no `\\u0000` or `\\ud800`-`\\udfff` escape holds no
such text (raw control characters are not valid JSON, and raw surrogates are not UTF-8).
A body that is not JSON at all is left to the route, which says what is wrong with it.

The upload paths (`raw_paths`, POST: a multipart file of up to `GATEWAY_MAX_UPLOAD_BYTES`)
are not read here at all: their route streams the body to a temporary file and reads no
JSON from it.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.common.errors import error_response

__all__ = ["JsonBodyGuard", "body_problem"]

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _BRACKETS)
_BAD_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89abcdefABCDEF][0-9a-fA-F]{2})")
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")

Loc = list[str | int]


class BodyProblem:
    """What is wrong with a body: too deep (400), or unstorable text at `loc` (422)."""

    def __init__(
        self, status: int, title: str, detail: str, loc: Loc | None = None, msg: str = ""
    ) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.loc = loc
        self.msg = msg or detail


def json_depth(body: bytes) -> int:
    """How deeply `body`'s arrays and objects nest (brackets inside strings not counted)."""
    structure = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    return max(accumulate(_BRACKETS[b] for b in structure), default=0)


def _bad_text(value: str) -> str | None:
    found = _BAD_TEXT.search(value)
    if found is None:
        return None
    if found.group() == "\x00":
        return "contains a NUL character (\\u0000), which cannot be stored"
    return f"contains a lone surrogate (\\u{ord(found.group()):04x}), which is not valid text"


def _find_bad_text(value: Any) -> tuple[Loc, str] | None:
    """The first string (or key) holding NUL or a lone surrogate, and what is wrong."""
    stack: list[tuple[Any, Loc]] = [(value, [])]
    while stack:
        item, loc = stack.pop()
        if isinstance(item, str):
            why = _bad_text(item)
            if why is not None:
                return loc, why
        elif isinstance(item, dict):
            for key, child in reversed(item.items()):
                why = _bad_text(key)
                if why is not None:
                    return [*loc, key], f"has a key that {why}"
                stack.append((child, [*loc, key]))
        elif isinstance(item, list):
            stack.extend((child, [*loc, i]) for i, child in reversed(list(enumerate(item))))
    return None


def body_problem(body: bytes, max_depth: int) -> BodyProblem | None:
    """What the edge refuses in `body`, or None (see the module doc)."""
    start = body.lstrip()[:1]
    if start not in (b"{", b"["):
        return None
    if body.count(b"[") + body.count(b"{") > max_depth and json_depth(body) > max_depth:
        return BodyProblem(
            400,
            "JSON nested too deeply",
            f"the body's JSON nests deeper than the limit of {max_depth} levels",
        )
    if _BAD_ESCAPE.search(body) is None:
        return None
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None  # not JSON: the route says so
    found = _find_bad_text(value)
    if found is None:
        return None
    loc, why = found
    field = ".".join(str(p) for p in loc) or "body"
    return BodyProblem(422, "Validation error", f"{field}: {why}", ["body", *loc], why)


def url_problem(scope: Scope) -> BodyProblem | None:
    """NUL in the (decoded) path or in the query string, or None."""
    why = "contains a NUL character (\\u0000)"
    if "\x00" in scope["path"]:
        return BodyProblem(422, "Validation error", f"path: {why}", ["path"], why)
    query: bytes = scope.get("query_string") or b""
    if b"%00" in query or b"\x00" in query:
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if "\x00" in name or "\x00" in value:
                where = name.replace("\x00", "\\u0000")
                return BodyProblem(
                    422, "Validation error", f"{where}: {why}", ["query", where], why
                )
    return None


class JsonBodyGuard:
    """Pure ASGI: refuses a bad URL, reads a JSON body whole, refuses it or hands it on
    unchanged."""

    def __init__(
        self, app: ASGIApp, max_depth: int, raw_paths: frozenset[str] = frozenset()
    ) -> None:
        self.app = app
        self.max_depth = max_depth
        self.raw_paths = raw_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = url_problem(scope)
        if problem is not None:
            await self._refuse(problem, scope, receive, send)
            return
        if scope["method"] not in BODY_METHODS or (
            scope["method"] == "POST" and scope["path"] in self.raw_paths
        ):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left: let the app see it
                await self.app(scope, _replay([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        problem = body_problem(body, self.max_depth)
        if problem is None:
            replayed: Message = {"type": "http.request", "body": body, "more_body": False}
            await self.app(scope, _replay([replayed], receive), send)
            return
        await self._refuse(problem, scope, receive, send)

    @staticmethod
    async def _refuse(problem: BodyProblem, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        errors = None
        if problem.loc is not None:
            errors = [{"loc": problem.loc, "msg": problem.msg, "type": "unstorable_text"}]
        response = error_response(
            request, problem.status, problem.title, problem.detail, errors=errors
        )
        await response(scope, receive, send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()

    return replay
