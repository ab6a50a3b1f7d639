"""Limits that protect the service, from Settings (`GATEWAY_MAX_*`).

The request schemas carry hard caps (they are in the OpenAPI spec); these settings can
lower them per deployment. A request over a limit gets the same 422 problem a schema
violation gets, naming the field (`LimitChecker`). Bodies over `max_body_bytes` are
`app.api.edge.body_size`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi.exceptions import RequestValidationError

from app.api.gateway.schemas.common import OptionsIn
from app.settings import Settings

Loc = tuple[str | int, ...]


class LimitChecker:
    """Collects every limit a body breaks, then raises one validation error for all."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.errors: list[dict[str, Any]] = []

    def _fail(self, loc: Loc, msg: str) -> None:
        self.errors.append({"loc": ("body", *loc), "msg": msg, "type": "limit_exceeded"})

    def text(self, loc: Loc, value: str | None) -> LimitChecker:
        limit = self.settings.max_prompt_chars
        if value is not None and len(value) > limit:
            self._fail(loc, f"is {len(value)} characters long; the limit is {limit}")
        return self

    def texts(self, loc: Loc, values: Sequence[str] | None, max_items: int) -> LimitChecker:
        if values is None:
            return self
        if len(values) > max_items:
            self._fail(loc, f"has {len(values)} items; the limit is {max_items}")
        for i, value in enumerate(values):
            self.text((*loc, i), value)
        return self

    def options(self, options: OptionsIn | None) -> LimitChecker:
        limit = self.settings.max_tokens_limit
        if options is not None and options.max_tokens is not None and options.max_tokens > limit:
            self._fail(("options", "max_tokens"), f"is {options.max_tokens}; the limit is {limit}")
        if options is not None:
            self.text(("options", "system_prompt"), options.system_prompt)
        return self

    def count(self, loc: Loc, items: Sequence[Any], max_items: int) -> LimitChecker:
        if len(items) > max_items:
            self._fail(loc, f"has {len(items)} items; the limit is {max_items}")
        return self

    def check(self) -> None:
        if self.errors:
            raise RequestValidationError(self.errors)
