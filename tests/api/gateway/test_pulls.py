"""/gateway/pulls: pulls as jobs with SSE progress."""

from __future__ import annotations

import asyncio
import json

import httpx

from tests.api.conftest import sse_events


async def wait_finished(client: httpx.AsyncClient, pull_id: str) -> dict[str, object]:
    for _ in range(200):
        job = (await client.get(f"/gateway/pulls/{pull_id}")).json()
        if job["status"] not in ("queued", "running"):
            return dict(job)
        await asyncio.sleep(0.02)
    raise AssertionError("pull did not finish")


async def test_a_pull_job_installs_the_model(client: httpx.AsyncClient) -> None:
    r = await client.post("/gateway/pulls", json={"model": "smollm2:135m"})
    assert r.status_code == 202, r.text
    job = r.json()
    # a job first: recorded, then run by a worker
    assert job["model"] == "smollm2:135m" and job["status"] in ("queued", "running")
    done = await wait_finished(client, job["id"])
    assert done["status"] == "succeeded" and done["error"] is None
    assert (await client.get("/gateway/models/smollm2:135m?refresh=true")).status_code == 200


async def test_pull_events_replay_progress_and_end_with_done(client: httpx.AsyncClient) -> None:
    job = (await client.post("/gateway/pulls", json={"model": "phi3:mini"})).json()
    r = await client.get(f"/gateway/pulls/{job['id']}/events")
    events = sse_events(r.text)
    names = [name for name, _ in events]
    assert names[-1] == "done" and set(names[:-1]) == {"progress"}
    statuses = [json.loads(data)["status"] for name, data in events if name == "progress"]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert json.loads(events[-1][1])["status"] == "succeeded"


async def test_a_model_the_registry_lacks_fails_with_its_reason(client: httpx.AsyncClient) -> None:
    job = (await client.post("/gateway/pulls", json={"model": "no-such-model:7b"})).json()
    done = await wait_finished(client, job["id"])
    assert done["status"] == "failed"
    assert "file does not exist" in str(done["error"])


async def test_unknown_pull_id_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/gateway/pulls/nope")).status_code == 404
    assert (await client.get("/gateway/pulls/nope/events")).status_code == 404
