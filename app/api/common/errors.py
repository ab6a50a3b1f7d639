"""Errors, rendered in the shape of the surface a request came to.

Routes raise `ApiError` (or let the core's exceptions through); the handlers here turn
every error into a status and a title and detail, by one mapping for the whole gateway
(`backend_problem`: a backend's failure by its exception class), and hand it to the
request's `Surface` to render: problem details on `/gateway`, Ollama's `{"error"}` on
`/api`, OpenAI's on `/v1`, and so on. Each surface package declares its `Surface`; the
app registers them (`install_error_handlers`), and the middlewares that refuse a request
before any route (`edge/`) find the shape the same way (`error_response`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Scope

from app.ollama import (
    BackendBusy,
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    InvalidRequest,
    ModelExecutionResult,
    RunCancelled,
)
from app.ollama.database_outage import (
    OUTAGE_TYPES,
    DatabaseUnavailable,
    SpoolFull,
    is_outage,
)
from app.ollama.metadata import error_class, run_metadata

logger = logging.getLogger(__name__)


class ErrorJSONResponse(JSONResponse):
    """JSON that renders whatever text an error echoes: a lone surrogate from the request
    (not UTF-8) is written as its JSON escape (`\\ud800`) instead of failing the reply."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.encode("utf-8", "backslashreplace")


class ApiError(Exception):
    """An error a route raises on purpose; rendered in its surface's shape."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        type_: str = "about:blank",
        headers: dict[str, str] | None = None,
        result_id: str | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type_
        self.headers = headers
        self.result_id = result_id


@dataclass(frozen=True)
class ErrorInfo:
    """One error, before a surface renders it."""

    status: int
    title: str
    detail: str | None = None
    type: str = "about:blank"
    errors: list[dict[str, Any]] | None = None
    """For validation errors: each bad field (`loc`, `msg`, `type`)."""
    headers: dict[str, str] | None = None
    result_id: str | None = None

    @property
    def param(self) -> str | None:
        """The first bad field as a dotted path without `body` (`messages.0.content`)."""
        if not self.errors:
            return None
        loc = [str(p) for p in self.errors[0]["loc"] if p != "body"]
        return ".".join(loc) or None


@dataclass(frozen=True)
class Surface:
    """A wire format the gateway speaks: the paths it owns and how it says an error.

    `prefixes`: the paths it owns (the longest matching prefix wins; `""` owns the rest);
    `owns`: a further test of a request (a header, say) for a surface that shares a prefix
    with another; `render_error`: the error as its clients read it; `bad_request_status`:
    what a request that fails validation gets (the gateway's 422, the others' 400);
    `no_route`: how an unknown path or method is answered, when not as any error.
    """

    name: str
    prefixes: tuple[str, ...]
    render_error: Callable[[ErrorInfo], Response]
    bad_request_status: int = 400
    no_route: Callable[[int, dict[str, str] | None], Response] | None = None
    owns: Callable[[Scope], bool] | None = None


@dataclass(frozen=True)
class Surfaces:
    """The surfaces an app speaks, to find the one a request belongs to."""

    all: Sequence[Surface]
    _by_length: list[tuple[int, str, Surface]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ranked = [(len(p), p, s) for s in self.all for p in s.prefixes]
        ranked.sort(key=lambda item: -item[0])
        object.__setattr__(self, "_by_length", ranked)

    def of(self, scope: Scope) -> Surface:
        path: str = scope.get("path", "")
        for _, prefix, surface in self._by_length:
            if prefix and path != prefix and not path.startswith(prefix + "/"):
                continue
            if surface.owns is None or surface.owns(scope):
                return surface
        raise LookupError(f"no surface serves {path!r}")  # an app always registers a "" one


def surfaces_of(scope: Scope) -> Surfaces:
    surfaces: Surfaces = scope["app"].state.surfaces
    return surfaces


def surface_of(scope: Scope) -> Surface:
    """The surface a request belongs to (see `Surfaces.of`)."""
    return surfaces_of(scope).of(scope)


def error_response(
    request: Request,
    status: int,
    title: str,
    detail: str | None = None,
    **problem: Any,
) -> Response:
    """An error in the shape the request's surface uses (see `surface_of`); `problem` takes
    `ErrorInfo`'s other fields (`type_` for `type`)."""
    surface = surface_of(request.scope)
    if status == 422:
        status = surface.bad_request_status
    if "type_" in problem:
        problem["type"] = problem.pop("type_")
    return surface.render_error(ErrorInfo(status, title, detail, **problem))


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(
        request,
        exc.status,
        exc.title,
        exc.detail,
        type_=exc.type,
        headers=exc.headers,
        result_id=exc.result_id,
    )


def _status_title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        route_methods = getattr(route, "methods", None)
        if match != Match.NONE and route_methods:
            methods |= set(route_methods)
    return ", ".join(sorted(methods))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else None
    headers = dict(exc.headers) if exc.headers else {}
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    surface = surface_of(request.scope)
    if surface.no_route is not None and exc.status_code in (404, 405):
        return surface.no_route(exc.status_code, headers or None)
    return error_response(
        request,
        exc.status_code,
        _status_title(exc.status_code),
        detail,
        headers=headers or None,
    )


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "loc": [str(p) if not isinstance(p, int) else p for p in err.get("loc", ())],
            "msg": str(err.get("msg", "invalid value")),
            "type": str(err.get("type", "value_error")),
        }
        for err in exc.errors()
    ]
    first = errors[0] if errors else None
    detail = (
        f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}" if first else "invalid request"
    )
    return error_response(request, 422, "Validation error", detail, errors=errors)


async def _invalid_request(request: Request, exc: Exception) -> Response:
    """The core's `InvalidRequest`: the caller's input, said back as a 422."""
    return error_response(request, 422, "Invalid request", str(exc))


async def _unhandled(request: Request, exc: Exception) -> Response:
    """Any other exception is the gateway's fault: a 500 with the request's id and none of
    the exception's text (which goes to the log, with its traceback)."""
    rid = getattr(request.state, "request_id", None)
    logger.error(
        "unhandled error in %s %s",
        request.method,
        request.url.path,
        exc_info=exc,
        extra={"request_id": rid},
    )
    detail = "the gateway failed; the error was logged"
    return error_response(
        request,
        500,
        "Internal error",
        f"{detail} under request id {rid}" if rid else detail,
        headers={"X-Request-ID": rid} if rid else None,
    )


RETRY_AFTER_SECONDS = "5"
BUSY = "Backend busy"
"""The title of a 503 for a full backend (every slot taken and the queue full, or the
backend's own 503): a surface with a status of its own for it (Anthropic's 529) finds it
by this title."""


def backend_problem(
    error: type[BaseException] | None,
    status: int | None,
    message: str,
    result_id: str | None = None,
) -> ApiError:
    """The problem a backend failure becomes, by the failure's exception class (a raised
    exception's, or the one a failed run's `error_type` stands for); then by the backend's
    own status. One mapping for raised errors and failed runs."""
    retry = {"Retry-After": RETRY_AFTER_SECONDS}
    if error is not None and issubclass(error, BackendBusy):
        return ApiError(503, BUSY, message, headers=retry, result_id=result_id)
    if error is not None and issubclass(error, BackendUnavailable):
        return ApiError(503, "Backend unavailable", message, headers=retry, result_id=result_id)
    if error is not None and issubclass(error, BackendTimeout):
        return ApiError(504, "Backend timed out", message, result_id=result_id)
    if error is not None and issubclass(error, RunCancelled):
        return ApiError(499, "Cancelled", message, result_id=result_id)
    if status == 404:
        return ApiError(404, "Not found", message, result_id=result_id)
    if status in (400, 422):
        return ApiError(422, "Rejected by the backend", message, result_id=result_id)
    if status == 503:
        return ApiError(503, BUSY, message, headers=retry, result_id=result_id)
    return ApiError(502, "Backend error", message, result_id=result_id)


def failed_run_problem(result: ModelExecutionResult) -> ApiError:
    meta = run_metadata(result)
    return backend_problem(
        error_class(meta.get("error_type")),
        meta.get("error_status"),
        result.error_message or "the run failed",
        meta.get("result_id"),
    )


async def _backend_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BackendError)
    problem = backend_problem(type(exc), exc.status, str(exc))
    if surface_of(request.scope).name != "gateway" and exc.status is not None and exc.status < 500:
        problem.status = exc.status  # the backend's own 4xx, as Ollama would answer it
    return await _api_error(request, problem)


DATABASE_RETRY_AFTER = "5"


def database_unavailable(request: Request, exc: BaseException) -> Response:
    """503 with `Retry-After` for a request that needs the database while it does not
    answer: the client may retry; nothing is wrong with its request."""
    rid = getattr(request.state, "request_id", None)
    logger.warning(
        "%s %s: the database does not answer (%s: %s)",
        request.method,
        request.url.path,
        type(exc).__name__,
        exc,
        extra={"request_id": rid},
    )
    if isinstance(exc, SpoolFull):
        detail = (
            "the database does not answer and the gateway's spool for results is full, so "
            "the result could not be kept; retry later"
        )
    elif isinstance(exc, DatabaseUnavailable):
        detail = f"{exc}; retry later"  # says what could not be done (a key checked ...)
    else:
        detail = "the database does not answer; retry later"
    return error_response(
        request,
        503,
        "Database unavailable",
        detail,
        headers={"Retry-After": DATABASE_RETRY_AFTER},
    )


async def _outage_or_unhandled(request: Request, exc: Exception) -> Response:
    """The classes a database outage surfaces as (`OUTAGE_TYPES`): a 503 when it is one,
    else what any unhandled exception gets."""
    if is_outage(exc):
        return database_unavailable(request, exc)
    return await _unhandled(request, exc)


def install_error_handlers(app: FastAPI, surfaces: Sequence[Surface]) -> None:
    """Render every error in the shape of `surfaces` (one of them must own `""`)."""
    if not any("" in s.prefixes for s in surfaces):
        raise ValueError("one surface must own every path no other claims (prefix '')")
    app.state.surfaces = Surfaces(surfaces)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(InvalidRequest, _invalid_request)
    app.add_exception_handler(BackendError, _backend_error)
    for outage_type in OUTAGE_TYPES:
        app.add_exception_handler(outage_type, _outage_or_unhandled)
    app.add_exception_handler(Exception, _outage_or_unhandled)
