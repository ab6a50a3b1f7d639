"""One error shape for the whole gateway API: RFC 9457 problem details.

Every error the `/gateway` API returns is `application/problem+json` with `type`, `title`,
`status`, `detail`, and for validation errors an `errors` list naming each bad field.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

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

PROBLEM_MEDIA_TYPE = "application/problem+json"


class ErrorJSONResponse(JSONResponse):
    """JSON that renders whatever text an error echoes: a lone surrogate from the request
    (not UTF-8) is written as its JSON escape (`\\ud800`) instead of failing the reply."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.encode("utf-8", "backslashreplace")


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="Where the bad value is, e.g. ['body', 'model'].")
    msg: str = Field(description="What is wrong with it.")
    type: str = Field(description="A machine-readable error kind.")


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = Field(default="about:blank", description="A URI naming the kind of problem.")
    title: str = Field(description="A short summary of the kind of problem.")
    status: int = Field(description="The HTTP status code.")
    detail: str | None = Field(default=None, description="What went wrong this time.")
    errors: list[FieldError] | None = Field(
        default=None, description="For validation errors: each bad field."
    )
    result_id: str | None = Field(
        default=None, description="For a failed run: the id its failed result is stored under."
    )


class ApiError(Exception):
    """An error a route raises on purpose; rendered as problem details."""

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


RUN_ERRORS: dict[int | str, dict[str, object]] = {
    404: {"model": Problem, "description": "The model is not installed."},
    422: {"model": Problem, "description": "The request is invalid."},
    502: {"model": Problem, "description": "The backend failed."},
    503: {
        "model": Problem,
        "description": "No backend is available, or the database does not answer and the "
        "spool that keeps results meanwhile is full; retry later (`Retry-After`).",
    },
    504: {"model": Problem, "description": "The run timed out."},
}
"""The errors of a route that runs a model (generate, chat, batches, ...)."""


def problem_response(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    type_: str = "about:blank",
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    result_id: str | None = None,
) -> JSONResponse:
    body = Problem(
        type=type_,
        title=title,
        status=status,
        detail=detail,
        errors=[FieldError(**e) for e in errors] if errors else None,
        result_id=result_id,
    ).model_dump(exclude_none=True)
    return ErrorJSONResponse(
        body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers
    )


def _status_title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


Surface = Literal["gateway", "ollama", "openai"]


def surface_of(path: str) -> Surface:
    """The API a request path belongs to: `ollama` (`/api`), `openai` (`/v1`) or `gateway`.

    Clients of the first two are other projects' SDKs, which read errors in their own
    shapes; the gateway's own routes answer problem details.
    """
    if path == "/api" or path.startswith("/api/"):
        return "ollama"
    if path == "/v1" or path.startswith("/v1/"):
        return "openai"
    return "gateway"


OPENAI_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error"}


def ollama_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Ollama's error shape: `{"error": "<message>"}`."""
    return ErrorJSONResponse(
        {"error": message},
        status_code=status,
        media_type="application/json; charset=utf-8",
        headers=headers,
    )


def openai_error(
    status: int, message: str, headers: dict[str, str] | None = None, *, param: str | None = None
) -> JSONResponse:
    """The OpenAI API's error shape (`error.message`, `type`, `param`, `code`)."""
    kind = OPENAI_ERROR_TYPES.get(status)
    if kind is None:
        kind = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}.get(
            status, "invalid_request_error" if 400 <= status < 500 else "api_error"
        )
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return ErrorJSONResponse(body, status_code=status, headers=headers)


def error_response(
    request: Request,
    status: int,
    title: str,
    detail: str | None = None,
    **problem: Any,
) -> JSONResponse:
    """An error in the shape the request's surface uses (see `surface_of`)."""
    surface = surface_of(request.url.path)
    headers = problem.get("headers")
    if surface != "gateway" and status == 422:
        status = 400  # both APIs answer a malformed request with 400
    if surface == "ollama":
        return ollama_error(status, detail or title, headers)
    if surface == "openai":
        errors = problem.get("errors") or []
        loc = [str(p) for p in errors[0]["loc"] if p != "body"] if errors else []
        return openai_error(status, detail or title, headers, param=".".join(loc) or None)
    return problem_response(status, title, detail, **problem)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
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
    if surface_of(request.url.path) == "ollama" and exc.status_code in (404, 405):
        # gin's own plain-text answers for an unknown path or method
        text = "404 page not found" if exc.status_code == 404 else "405 method not allowed"
        return PlainTextResponse(text, status_code=exc.status_code, headers=headers or None)
    return error_response(
        request,
        exc.status_code,
        _status_title(exc.status_code),
        detail,
        headers=headers or None,
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
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


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """The core's `InvalidRequest`: the caller's input, said back as a 422."""
    return error_response(request, 422, "Invalid request", str(exc))


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
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
    if error is not None and issubclass(error, BackendUnavailable | BackendBusy):
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
        return ApiError(503, "Backend busy", message, headers=retry, result_id=result_id)
    return ApiError(502, "Backend error", message, result_id=result_id)


def failed_run_problem(result: ModelExecutionResult) -> ApiError:
    meta = run_metadata(result)
    return backend_problem(
        error_class(meta.get("error_type")),
        meta.get("error_status"),
        result.error_message or "the run failed",
        meta.get("result_id"),
    )


async def _backend_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BackendError)
    problem = backend_problem(type(exc), exc.status, str(exc))
    if surface_of(request.url.path) != "gateway" and exc.status is not None and exc.status < 500:
        problem.status = exc.status  # the backend's own 4xx, as Ollama would answer it
    return await _api_error(request, problem)


DATABASE_RETRY_AFTER = "5"


def database_unavailable(request: Request, exc: BaseException) -> JSONResponse:
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


async def _outage_or_unhandled(request: Request, exc: Exception) -> JSONResponse:
    """The classes a database outage surfaces as (`OUTAGE_TYPES`): a 503 when it is one,
    else what any unhandled exception gets."""
    if is_outage(exc):
        return database_unavailable(request, exc)
    return await _unhandled(request, exc)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(InvalidRequest, _invalid_request)
    app.add_exception_handler(BackendError, _backend_error)
    for outage_type in OUTAGE_TYPES:
        app.add_exception_handler(outage_type, _outage_or_unhandled)
    app.add_exception_handler(Exception, _outage_or_unhandled)
