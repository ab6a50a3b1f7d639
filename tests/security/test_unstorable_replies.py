"""Text no database can hold can also come from a backend (a model may write NUL): the
run is still answered and stored, escaped and flagged where the database refused it, and
counted in `gateway_rows_escaped`."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.main import create_app
from tests.api.conftest import gateway_settings
from tests.support.databases import fresh_pg_database
from tests.support.servers import answer_lifespan, serving_in_thread

MODEL = "nul-writer:latest"
REPLY = "before\x00after"


async def nul_backend(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A stand-in Ollama with one model whose every reply holds a NUL character."""
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    while (await receive()).get("more_body"):
        pass
    if scope["path"] == "/api/tags":
        body: dict[str, Any] = {"models": [{"name": MODEL, "model": MODEL, "size": 1}]}
    elif scope["path"] in ("/api/generate", "/api/chat"):
        body = {"model": MODEL, "created_at": "2026-11-30T00:00:00Z", "done": True,
                "done_reason": "stop", "eval_count": 2, "prompt_eval_count": 1}  # fmt: skip
        if scope["path"] == "/api/chat":
            body["message"] = {"role": "assistant", "content": REPLY}
        else:
            body["response"] = REPLY
    else:
        body = {"models": []} if scope["path"] == "/api/ps" else {"version": "0.33.0"}
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json; charset=utf-8")]})  # fmt: skip
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/gateway.db"
        return
    with fresh_pg_database() as url:
        yield url


def test_a_reply_holding_nul_is_answered_and_stored(database_url: str, tmp_path: Path) -> None:
    with serving_in_thread(nul_backend) as backend:
        settings = gateway_settings([backend], tmp_path, database_url=database_url)
        with serving_in_thread(create_app(settings)) as url, httpx.Client(base_url=url) as c:
            ran = c.post("/gateway/generate", json={"model": MODEL, "prompt": "hi"})
            relayed = c.post("/api/chat", json={"model": MODEL, "stream": False,
                                                "messages": [{"role": "user", "content": "x"}]})  # fmt: skip
            batch = c.post("/gateway/batches", json={"model": MODEL, "prompts": ["a", "b"]})
            assert (ran.status_code, relayed.status_code, batch.status_code) == (200, 200, 200)
            assert ran.json()["response"] == REPLY and ran.json()["id"]
            assert relayed.json()["message"]["content"] == REPLY
            stored = c.get(f"/gateway/results/{ran.json()['id']}").json()
            batch_runs = c.get(f"/gateway/batches/{batch.json()['id']}").json()["runs"]
            results = c.get("/gateway/results", params={"limit": 50}).json()["items"]
            metrics = c.get("/metrics").text
    assert len(results) == 4 and len(batch_runs) == 2
    postgres = database_url.startswith("postgresql")
    expected = "before\\u0000after" if postgres else REPLY
    assert stored["response"] == expected
    assert {r["response"] for r in results} == {expected}
    found = re.search(r'gateway_rows_escaped_total\{table="executions"\} (\S+)', metrics)
    assert found is not None and float(found.group(1)) == (4.0 if postgres else 0.0)
