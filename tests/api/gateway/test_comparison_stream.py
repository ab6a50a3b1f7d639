"""`POST /gateway/comparisons/stream`: one prompt on several models at once, their answers
streamed side by side, then the comparison stored as `POST /gateway/comparisons` stores one."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.main import create_app
from tests.api.conftest import gateway_settings, sse_events
from tests.support.servers import running_emulator, serving_in_thread

MODELS = ["llama3.1:8b", "qwen2.5:0.5b"]
TOKENS = 15


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[str]:
    """A gateway on one emulator answering `TOKENS` tokens 20 ms apart."""
    args = ["--reply-tokens", str(TOKENS)]
    with running_emulator(models=MODELS, token_delay_ms=20, extra_args=args) as backend:
        app = create_app(gateway_settings([backend], tmp_path))
        with serving_in_thread(app) as url:
            yield url


def events_of(text: str) -> list[tuple[str, dict[str, Any]]]:
    return [(name, json.loads(data)) for name, data in sse_events(text)]


def test_every_model_streams_at_once_and_the_comparison_is_stored(gateway: str) -> None:
    body = {"models": [*MODELS, "nope:1b"], "prompt": "Explain recursion."}
    reply = httpx.post(f"{gateway}/gateway/comparisons/stream", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = events_of(reply.text)
    names = [name for name, _ in events]
    assert set(names) == {"chunk", "run", "comparison"} and names[-1] == "comparison"

    # Both answers grow together: each model's first piece comes before either run ends.
    first_run = names.index("run")
    early = {data["model"] for name, data in events[:first_run] if name == "chunk"}
    assert early == set(MODELS), names[:first_run]

    text: dict[str, str] = {}
    for name, data in events:
        if name == "chunk":
            text[data["model"]] = text.get(data["model"], "") + data["content"]
    runs = {data["model_name"]: data for name, data in events if name == "run"}
    assert set(runs) == {*MODELS, "nope:1b"}
    assert not runs["nope:1b"]["success"] and "not found" in runs["nope:1b"]["error_message"]
    for model in MODELS:
        assert runs[model]["success"] and runs[model]["response"] == text[model]
        assert runs[model]["tokens_used"] == TOKENS

    report = events[-1][1]
    assert report["id"]
    summary = report["report"]["summary"]
    assert summary["models"] == body["models"] and set(summary["failures"]) == {"nope:1b"}
    assert summary["fastest_model"] in MODELS
    stored = httpx.get(f"{gateway}/gateway/comparisons/{report['id']}", timeout=10)
    assert stored.status_code == 200, stored.text
    results = stored.json()["report"]["results"]
    assert {m: results[m]["response"] for m in MODELS} == {m: text[m] for m in MODELS}
    linked = {run["model_name"]: run for run in stored.json()["runs"]}  # stored, linked
    assert set(linked) == set(body["models"])
    assert {m: linked[m]["response"] for m in MODELS} == {m: text[m] for m in MODELS}
    assert all(run["kind"] == "comparison" for run in linked.values())


async def test_a_client_that_leaves_cancels_the_runs_and_the_comparison_is_kept(
    gateway: str,
) -> None:
    body = {"models": MODELS, "prompt": "A long answer, please."}
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:
        before = (await client.get("/gateway/comparisons")).json()
        seen = 0
        async with client.stream("POST", "/gateway/comparisons/stream", json=body) as reply:
            assert reply.status_code == 200
            async for line in reply.aiter_lines():
                seen += line.startswith("event: chunk")
                if seen == 4:
                    break  # leave with both answers half-way
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            listed = (await client.get("/gateway/comparisons")).json()
            if len(listed["items"]) > len(before["items"]):
                break
            await asyncio.sleep(0.1)
        newest = listed["items"][0]
        stored = (await client.get(f"/gateway/comparisons/{newest['id']}")).json()
        backends = (await client.get("/gateway/backends")).json()
    failures = stored["report"]["summary"]["failures"]
    assert failures == {m: "cancelled before the run finished" for m in MODELS}, failures
    for model in MODELS:
        partial = stored["report"]["results"][model]["metadata"].get("partial_response", "")
        assert 0 < len(partial) < 200, partial  # what it had, not a whole answer
    assert all(b["outstanding"] == 0 for b in backends)  # no slot left taken


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"models": ["llama3.1:8b", "llama3.1:8b"], "prompt": "x"}, "repeat"),
        ({"models": [], "prompt": "x"}, "models"),
        ({"models": MODELS, "prompt": "x", "background": True}, "background"),
        ({"models": ["../etc"], "prompt": "x"}, "models"),
        ({"models": MODELS}, "prompt"),
    ],
)
def test_a_bad_body_is_a_422_naming_what_is_wrong(
    gateway: str, body: dict[str, Any], words: str
) -> None:
    reply = httpx.post(f"{gateway}/gateway/comparisons/stream", json=body, timeout=10)
    assert reply.status_code == 422, reply.text
    assert words in reply.json()["detail"]
