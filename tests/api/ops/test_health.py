"""/healthz and /readyz."""

from __future__ import annotations

import httpx


async def test_healthz_answers_while_the_process_lives(down_client: httpx.AsyncClient) -> None:
    r = await down_client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


async def test_readyz_is_ready_when_backend_and_database_answer(client: httpx.AsyncClient) -> None:
    r = await client.get("/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready"
    assert body["missing"] == []
    assert body["backends"][0]["healthy"] is True
    assert "llama3.1:8b" in body["backends"][0]["models"]


async def test_readyz_names_the_missing_backend(down_client: httpx.AsyncClient) -> None:
    r = await down_client.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "not ready"
    assert body["missing"] == ["backend"]
    assert body["backends"][0]["healthy"] is False
    assert body["backends"][0]["error"]
