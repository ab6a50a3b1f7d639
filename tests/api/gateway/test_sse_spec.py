"""The event streams as the spec describes them: each event of a real stream matches its
`x-sse-item-schema` (the event) and its `x-sse-events` entry (the JSON in `data`), for the
streams of runs, comparisons, jobs, batch jobs and pulls. (OpenAPI 3.1 has no place of its own for a
stream's events: see app/api/gateway/openapi.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema

from tests.api.conftest import sse_events

SPEC = json.loads(
    (Path(__file__).resolve().parents[3] / "openapi" / "openapi.json").read_text(encoding="utf-8")
)


def check_stream(path: str, method: str, body: str) -> set[str]:
    """Validate each event of `body` against the spec of `method path`; the event names."""
    media = SPEC["paths"][path][method]["responses"]["200"]["content"]["text/event-stream"]
    assert "schema" not in media  # a body schema would make SDKs parse the stream as JSON
    envelope = {**media["x-sse-item-schema"], "components": SPEC["components"]}
    names = set()
    for name, data in sse_events(body):
        event: dict[str, Any] = {"event": name, "data": data}
        jsonschema.validate(event, envelope, cls=jsonschema.Draft202012Validator)
        payload = {**media["x-sse-events"][name], "components": SPEC["components"]}
        jsonschema.validate(json.loads(data), payload, cls=jsonschema.Draft202012Validator)
        names.add(name)
    return names


async def test_streams_match_their_event_schemas(client: httpx.AsyncClient) -> None:
    chat = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}]}
    streamed = await client.post("/gateway/chat/stream", json=chat)
    assert check_stream("/gateway/chat/stream", "post", streamed.text) == {"chunk", "result"}
    generated = await client.post(
        "/gateway/generate/stream", json={"model": "nope:1b", "prompt": "x"}
    )
    assert generated.status_code == 404  # fails early: a problem, not a stream
    generated = await client.post(
        "/gateway/generate/stream", json={"model": "llama3.1:8b", "prompt": "x"}
    )
    assert check_stream("/gateway/generate/stream", "post", generated.text) == {
        "chunk",
        "result",
    }

    compared = await client.post(
        "/gateway/comparisons/stream",
        json={"models": ["llama3.1:8b", "qwen2.5:0.5b"], "prompt": "x"},
    )
    assert check_stream("/gateway/comparisons/stream", "post", compared.text) == {
        "chunk",
        "run",
        "comparison",
    }

    batch = await client.post(
        "/gateway/batches",
        json={"model": "llama3.1:8b", "prompts": ["a", "b"], "background": True},
    )
    assert batch.status_code == 202, batch.text
    job_id = batch.json()["id"]
    events = await client.get(f"/gateway/batches/jobs/{job_id}/events")
    names = check_stream("/gateway/batches/jobs/{job_id}/events", "get", events.text)
    assert names == {"progress", "done"}
    events = await client.get(f"/gateway/jobs/{job_id}/events")
    assert check_stream("/gateway/jobs/{job_id}/events", "get", events.text) == names

    pull = (await client.post("/gateway/pulls", json={"model": "phi3:mini"})).json()
    events = await client.get(f"/gateway/pulls/{pull['id']}/events")
    names = check_stream("/gateway/pulls/{pull_id}/events", "get", events.text)
    assert names == {"progress", "done"}
