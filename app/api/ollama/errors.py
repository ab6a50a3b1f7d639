"""Ollama's error shape: `{"error": "<message>"}`; an unknown path or method answers as
Ollama's router (gin) does, in plain text."""

from __future__ import annotations

from fastapi.responses import JSONResponse, PlainTextResponse, Response

from app.api.common.errors import ErrorInfo, ErrorJSONResponse, Surface

__all__ = ["SURFACE", "ollama_error"]


def ollama_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Ollama's error shape: `{"error": "<message>"}`."""
    return ErrorJSONResponse(
        {"error": message},
        status_code=status,
        media_type="application/json; charset=utf-8",
        headers=headers,
    )


def _render(error: ErrorInfo) -> Response:
    return ollama_error(error.status, error.detail or error.title, error.headers)


def _no_route(status: int, headers: dict[str, str] | None) -> Response:
    # gin's own plain-text answers for an unknown path or method
    text = "404 page not found" if status == 404 else "405 method not allowed"
    return PlainTextResponse(text, status_code=status, headers=headers)


SURFACE = Surface(name="ollama", prefixes=("/api",), render_error=_render, no_route=_no_route)
