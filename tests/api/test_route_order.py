"""The order of the app's route groups is chosen for speed (the hot paths first, see
`app.main.create_app`): that is safe only while no request can match routes of two groups,
whose order would then decide the answer. Every route's path, with its parameters filled
in, is sent with every method (and with and without `anthropic-version`) through the app's top-level routes; each must be matched by
one group only (the one exception, `GET /v1/models`, answered by Anthropic's group before
OpenAI's, is checked in its order)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

from starlette.routing import BaseRoute, Match

from app.api.anthropic import routes as anthropic_api
from app.api.openai import routes as openai_api
from app.main import create_app
from tests.api.conftest import gateway_settings

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
HEADERS = ([], [(b"anthropic-version", b"2023-06-01")])
"""No header, and Anthropic's (its routes for `/v1/models` answer only with it)."""
SHARED = re.compile(r"/v1/models(/.*)?")
"""Paths two groups answer, in an order the app keeps on purpose."""


def concrete(template: str) -> list[str]:
    """Request paths for a route template: its parameters filled in, a path parameter
    with one segment and with two."""
    one = re.sub(r"\{[^}]+\}", "x", template)
    two = re.sub(r"\{[^}:]+:path\}", "x/y", template)
    return sorted({one, two, one.rstrip("/") + "/"})


def original_router(route: BaseRoute) -> object:
    return getattr(route, "original_router", route)


def test_no_request_is_matched_by_two_route_groups(tmp_path: Path) -> None:
    app = create_app(gateway_settings([], tmp_path))
    groups = app.router.routes
    templates = set()
    for group in groups:
        for route in getattr(original_router(group), "routes", [group]):
            if isinstance(path := getattr(route, "path", None), str):
                templates.add(path)
    assert {"/api/chat", "/gateway/generate", "/v1/messages", "/healthz"} <= templates
    checked, shared = 0, set()
    for template in sorted(templates):
        for path in concrete(template):
            for method, headers in itertools.product(METHODS, HEADERS):
                scope = {
                    "type": "http",
                    "method": method,
                    "path": path,
                    "root_path": "",
                    "headers": headers,
                    "query_string": b"",
                    "app": app,
                }
                matched = [
                    i
                    for i, group in enumerate(groups)
                    if group.matches(dict(scope))[0] != Match.NONE
                ]
                checked += 1
                if len(matched) <= 1:
                    continue
                assert SHARED.fullmatch(path), (method, path, [groups[i] for i in matched])
                owners = [original_router(groups[i]) for i in matched]
                assert owners == [anthropic_api.router, openai_api.router], (method, path)
                shared.add(path)
    assert checked > 1000
    assert {"/v1/models", "/v1/models/x"} <= shared  # it sees two groups where there are two
