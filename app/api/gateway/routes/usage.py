"""The usage ledger: who used what, per hour or day, grouped by team, key, model, backend
or surface; JSON, or CSV when asked for with `Accept: text/csv`."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from app.api.common.auth import UserDep
from app.api.common.deps import ServicesDep, UsageDep
from app.api.common.ownership import owner_of
from app.api.gateway.schemas.usage import UsagePage
from app.usage import COUNTS

router = APIRouter(prefix="/gateway/usage", tags=["usage"])

GroupBy = Literal["team", "key", "model", "backend", "surface"]
MAX_DAYS = 400
"""The longest range one request may ask for."""
DEFAULT_DAYS = 7

DATE_OR_TIME: dict[str, Any] = {
    "anyOf": [{"type": "string", "format": "date"}, {"type": "string", "format": "date-time"}]
}
"""`from` and `to` in the spec: a date or an RFC 3339 date-time."""


def _invalid(field: str, message: str, value: Any = None) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "value_error", "loc": ("query", field), "msg": message, "input": value}]
    )


def _moment(field: str, text: str, *, end: bool) -> datetime:
    """A date (its start; for `to`, the end of that day) or an RFC 3339 date-time (UTC when
    it names no offset)."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            if end:
                return start + timedelta(days=1) if day < date.max else datetime.max
            return start
        moment = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError:
        raise _invalid(
            field, "must be a date (2026-01-31) or an RFC 3339 date-time", text
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


_EARLIEST = datetime(1, 1, 8, tzinfo=UTC)
"""The earliest `to` that has 7 days before it."""


def _in_utc(moment: datetime) -> datetime:
    """`moment` in UTC; the ends of the calendar (an offset beyond them) clamped."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return (
            datetime.max.replace(tzinfo=UTC)
            if moment.year > 1
            else datetime.min.replace(tzinfo=UTC)
        )


def usage_range(since: str | None, until: str | None) -> tuple[datetime, datetime]:
    """[from, to) of a request: to defaults to now, from to 7 days before to; 422 naming
    the field when a value is not a date, from is after to, or the range is over 400 days."""
    end = _in_utc(_moment("to", until, end=True)) if until is not None else datetime.now(UTC)
    if since is not None:
        start = _in_utc(_moment("from", since, end=False))
    else:
        start = _in_utc(datetime.min) if end < _EARLIEST else end - timedelta(days=DEFAULT_DAYS)
    if start > end:
        raise _invalid("from", "is after to", since)
    if end - start > timedelta(days=MAX_DAYS):
        raise _invalid("from", f"the range from..to is over {MAX_DAYS} days", since)
    return start, end


def _csv(rows: list[dict[str, Any]], group_by: str, priced: bool) -> str:
    out = io.StringIO()
    fields = ["bucket", group_by, *COUNTS, *(["cost"] if priced else [])]
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in fields})
    return out.getvalue()


@router.get(
    "",
    operation_id="get_usage",
    response_model=UsagePage,
    responses={
        200: {
            "content": {
                "text/csv": {
                    "schema": {"type": "string"},
                    "example": "bucket,team,requests,failures,prompt_tokens,output_tokens,"
                    "backend_seconds,load_seconds\r\n"
                    "2026-12-05T08:00:00Z,search,12,0,3400,2100,18.5,1.2\r\n",
                }
            },
            "description": "The rows, oldest bucket first (CSV with `Accept: text/csv`).",
        }
    },
)
async def get_usage(
    request: Request,
    services: ServicesDep,
    ledger: UsageDep,
    principal: UserDep,
    group_by: GroupBy = Query(default="team", description="What each row is about."),
    bucket: Literal["hour", "day"] = Query(default="hour", description="Hours or days (UTC)."),
    since: str | None = Query(
        default=None,
        alias="from",
        max_length=40,
        json_schema_extra=DATE_OR_TIME,
        description="Start: a date (its first hour) or an RFC 3339 date-time; default 7 days "
        "before `to`.",
    ),
    until: str | None = Query(
        default=None,
        alias="to",
        max_length=40,
        json_schema_extra=DATE_OR_TIME,
        description="End (not included): a date (to its end) or an RFC 3339 date-time; "
        "default now. At most 400 days after `from`.",
    ),
) -> Response:
    """What was used, per key, team, model, backend and surface and hour or day: requests,
    failures, prompt and output tokens, the backends' own seconds (GPU time) and the part
    spent loading models, with a cost when GATEWAY_PRICES is set. Background jobs count
    for the key that started them. An admin sees every key's usage, a user key its own."""
    start, end = usage_range(since, until)
    prices = services.settings.prices
    rows = await ledger.arows(
        group_by=group_by,
        bucket=bucket,
        since=start,
        until=end,
        principal=owner_of(principal),
        prices=prices,
    )
    if "text/csv" in request.headers.get("accept", ""):
        return Response(
            _csv(rows, group_by, prices is not None), media_type="text/csv; charset=utf-8"
        )
    body: dict[str, Any] = {"rows": rows}
    if prices is not None:
        body["currency"] = prices.currency
    return JSONResponse(body)
