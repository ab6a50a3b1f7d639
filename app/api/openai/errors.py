"""The OpenAI API's error shape: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from app.api.common.errors import ErrorInfo, ErrorJSONResponse, Surface

__all__ = ["OPENAI_ERROR_TYPES", "SURFACE", "openai_error"]

OPENAI_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error"}


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


def _render(error: ErrorInfo) -> JSONResponse:
    return openai_error(error.status, error.detail or error.title, error.headers, param=error.param)


SURFACE = Surface(name="openai", prefixes=("/v1",), render_error=_render)
