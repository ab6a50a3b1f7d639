"""The gateway's own error shape: RFC 9457 problem details.

Every error the `/gateway` API returns is `application/problem+json` with `type`, `title`,
`status`, `detail`, and for validation errors an `errors` list naming each bad field. The
gateway surface is also the shape of every path no other surface claims (`/healthz`,
`/readyz`, `/metrics`, `/ui`).
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app.api.common.errors import ErrorInfo, ErrorJSONResponse, Surface

__all__ = [
    "PROBLEM_MEDIA_TYPE",
    "RUN_ERRORS",
    "SURFACE",
    "FieldError",
    "Problem",
    "problem_response",
]

PROBLEM_MEDIA_TYPE = "application/problem+json"


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


def _render(error: ErrorInfo) -> JSONResponse:
    return problem_response(
        error.status,
        error.title,
        error.detail,
        type_=error.type,
        errors=error.errors,
        headers=error.headers,
        result_id=error.result_id,
    )


SURFACE = Surface(name="gateway", prefixes=("",), render_error=_render, bad_request_status=422)
"""Problem details for `/gateway` and every path no other surface claims."""
