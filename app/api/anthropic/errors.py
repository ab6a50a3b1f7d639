"""The Anthropic API's error shape: `{"type": "error", "error": {"type", "message"}}`.

The status says the type, as Anthropic's API does; a full fleet (every backend's slots and
queue taken, or a backend's own 503) is Anthropic's 529 `overloaded_error`, which its
clients retry. The surface owns `/v1/messages` and, for requests that carry
`anthropic-version` (Anthropic's clients always send it), `/v1/models`.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.types import Scope

from app.api.common.errors import BUSY, ErrorInfo, ErrorJSONResponse, Surface

__all__ = ["ERROR_TYPES", "SURFACE", "anthropic_error", "error_type"]

VERSION_HEADER = b"anthropic-version"
OVERLOADED = 529

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    OVERLOADED: "overloaded_error",
}


def error_type(status: int) -> str:
    """Anthropic's error type for a status."""
    kind = ERROR_TYPES.get(status)
    if kind is None:
        kind = "invalid_request_error" if 400 <= status < 500 else "api_error"
    return kind


def status_of(error: ErrorInfo) -> int:
    """The status Anthropic's clients get: a full backend is 529."""
    return OVERLOADED if error.status == 503 and error.title == BUSY else error.status


def anthropic_error(
    status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"type": "error", "error": {"type": error_type(status), "message": message}}
    return ErrorJSONResponse(body, status_code=status, headers=headers)


def error_message(error: ErrorInfo) -> str:
    """The message: the first bad field and what is wrong with it for a validation error
    (`max_tokens: Field required`), else the error's detail."""
    if error.errors:
        first = error.errors[0]
        field = ".".join(str(p) for p in first["loc"] if p != "body")
        return f"{field}: {first['msg']}" if field else str(first["msg"])
    return error.detail or error.title


def _render(error: ErrorInfo) -> JSONResponse:
    return anthropic_error(status_of(error), error_message(error), error.headers)


def _owns(scope: Scope) -> bool:
    path: str = scope.get("path", "")
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return True
    return any(key.lower() == VERSION_HEADER for key, _ in scope.get("headers") or ())


SURFACE = Surface(
    name="anthropic",
    prefixes=("/v1/messages", "/v1/models"),
    render_error=_render,
    owns=_owns,
)
