"""Routes that two surfaces share a path for, told apart by a header.

`GET /v1/models` is OpenAI's list, unless the request carries `anthropic-version`: then it
is Anthropic's. The surface that answers only with the header registers its route with the
class `requiring_header` makes, ahead of the other surface's router; without the header the
route does not match at all and the request goes on to the next route, as if it were not
there.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from functools import cache
from typing import Any

from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import Scope

__all__ = ["requiring_header"]


@cache
def requiring_header(name: str) -> type[APIRoute]:
    """An `APIRoute` class whose routes match only requests carrying the header `name`."""
    wanted = name.lower().encode("latin-1")

    class HeaderRoute(APIRoute):
        def matches(self, scope: Scope) -> tuple[Match, MutableMapping[str, Any]]:
            headers = scope.get("headers") or ()
            if not any(key.lower() == wanted for key, _ in headers):
                return Match.NONE, {}
            return super().matches(scope)

    HeaderRoute.__name__ = HeaderRoute.__qualname__ = f"Requiring({name})"
    return HeaderRoute
