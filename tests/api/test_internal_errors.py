"""An internal error is a 500 with a request id and none of its text; a bad request is
still a 422 naming what is wrong (only the core's `InvalidRequest` becomes a 422)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx

LEAKS = ("ValidationError", "validation error", "StoredResult", "bogus", "Traceback", "literal")


async def test_an_internal_value_error_is_a_500_with_a_request_id_and_no_internal_text(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """A stored row the code cannot read (its kind is not one the API knows) makes the
    response model raise pydantic's ValidationError, a ValueError, deep in the route."""
    made = await client.post("/gateway/generate", json={"model": "llama3.1:8b", "prompt": "hi"})
    result_id = made.json()["id"]
    with sqlite3.connect(tmp_path / "gateway.db") as db:
        db.execute("UPDATE executions SET kind = 'bogus' WHERE id = ?", (result_id,))
    reply = await client.get(f"/gateway/results/{result_id}", headers={"X-Request-ID": "r-42"})
    assert reply.status_code == 500
    assert reply.headers["content-type"].startswith("application/problem+json")
    assert reply.headers["x-request-id"] == "r-42"
    detail = reply.json()["detail"]
    assert detail == "the gateway failed; the error was logged under request id r-42"
    assert not any(word in reply.text for word in LEAKS), reply.text


async def test_bad_requests_are_still_422_naming_the_field(client: httpx.AsyncClient) -> None:
    by_schema = await client.get("/gateway/results", params={"limit": 0})
    assert by_schema.status_code == 422
    assert by_schema.json()["errors"][0]["loc"] == ["query", "limit"]
    # passes the route's schema, refused by the core (its InvalidRequest): ':' is no name
    by_core = await client.get("/gateway/models/:")
    assert by_core.status_code == 422, by_core.text
    assert by_core.json() == {
        "type": "about:blank",
        "title": "Invalid request",
        "status": 422,
        "detail": "invalid model name: ':'",
    }
