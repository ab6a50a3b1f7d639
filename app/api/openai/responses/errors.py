"""The Responses API's errors: OpenAI's shape (`app.api.openai.errors`), under a surface of
its own, `responses`, so the audit log files its requests apart from the rest of `/v1`."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from app.api.common.errors import ErrorInfo, Surface
from app.api.openai.errors import openai_error

__all__ = ["SURFACE"]


def _render(error: ErrorInfo) -> JSONResponse:
    return openai_error(error.status, error.detail or error.title, error.headers, param=error.param)


SURFACE = Surface(name="responses", prefixes=("/v1/responses",), render_error=_render)
