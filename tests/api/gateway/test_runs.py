"""/gateway/generate, /gateway/chat, /gateway/batches: plain runs and their errors."""

from __future__ import annotations

import json

import httpx

from tests.api.conftest import set_faults, sse_events

PROBLEM = "application/problem+json"


async def test_generate_returns_the_result_fields(client: httpx.AsyncClient) -> None:
    body = {"model": "llama3.1:8b", "prompt": "Explain recursion.", "options": {"max_tokens": 7}}
    r = await client.post("/gateway/generate", json=body)
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["success"] is True and result["model_name"] == "llama3.1:8b"
    assert result["prompt"] == "Explain recursion."
    assert result["tokens_used"] == 7
    assert result["metadata"]["done_reason"] == "length"
    assert result["response"]


async def test_generate_is_deterministic_for_the_same_input(client: httpx.AsyncClient) -> None:
    body = {"model": "llama3.1:8b", "prompt": "Same prompt", "options": {"temperature": 0}}
    first = (await client.post("/gateway/generate", json=body)).json()["response"]
    second = (await client.post("/gateway/generate", json=body)).json()["response"]
    assert first == second


async def test_generate_with_context_docs_records_the_documents(client: httpx.AsyncClient) -> None:
    body = {
        "model": "llama3.1:8b",
        "prompt": "What colour is the sky?",
        "context_docs": ["The sky is blue.", "Grass is green."],
    }
    r = await client.post("/gateway/generate", json=body)
    assert r.status_code == 200, r.text
    result = r.json()
    assert "The sky is blue." in result["prompt"] and "Grass is green." in result["prompt"]
    assert result["metadata"]["question"] == "What colour is the sky?"


async def test_generate_on_an_unknown_model_is_a_404_problem(client: httpx.AsyncClient) -> None:
    r = await client.post("/gateway/generate", json={"model": "nope:1b", "prompt": "hi"})
    assert r.status_code == 404
    assert r.headers["content-type"].startswith(PROBLEM)
    assert "nope:1b" in r.json()["detail"]


async def test_invalid_bodies_are_422_naming_the_field(client: httpx.AsyncClient) -> None:
    cases = [
        ({"model": "llama3.1:8b"}, ["body", "prompt"]),
        ({"model": "", "prompt": "x"}, ["body", "model"]),
        ({"model": "llama3.1:8b", "prompt": "x", "options": {"temperature": 9}}, None),
        ({"model": "llama3.1:8b", "prompt": "x", "options": {"max_tokens": 0}}, None),
        ({"model": "llama3.1:8b", "prompt": "x", "typo": 1}, ["body", "typo"]),
        ({"model": "llama3.1:8b", "prompt": 5}, ["body", "prompt"]),
    ]
    for body, loc in cases:
        r = await client.post("/gateway/generate", json=body)
        assert r.status_code == 422, (body, r.text)
        problem = r.json()
        assert problem["status"] == 422 and problem["errors"], body
        if loc is not None:
            assert problem["errors"][0]["loc"] == loc, problem


async def test_malformed_json_is_a_422_not_a_500(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/gateway/generate", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    assert r.headers["content-type"].startswith(PROBLEM)


async def test_backend_down_is_503_with_retry_after(down_client: httpx.AsyncClient) -> None:
    r = await down_client.post("/gateway/generate", json={"model": "llama3.1:8b", "prompt": "x"})
    assert r.status_code == 503
    assert r.headers["retry-after"]


async def test_backend_failure_is_a_502_problem(
    client: httpx.AsyncClient, emulator_url: str
) -> None:
    set_faults(emulator_url, fail_next=1, fail_status=500, fail_message="runner crashed")
    r = await client.post("/gateway/generate", json={"model": "llama3.1:8b", "prompt": "x"})
    assert r.status_code == 502
    assert "runner crashed" in r.json()["detail"]


async def test_a_timeout_is_a_504_problem(client: httpx.AsyncClient, emulator_url: str) -> None:
    set_faults(emulator_url, first_token_delay_ms=3000)
    body = {"model": "llama3.1:8b", "prompt": "x", "options": {"timeout": 1}}
    r = await client.post("/gateway/generate", json=body)
    assert r.status_code == 504
    assert "timed out" in r.json()["detail"]


async def test_chat_answers_the_last_user_message(client: httpx.AsyncClient) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "How are you?"},
    ]
    r = await client.post("/gateway/chat", json={"model": "llama3.1:8b", "messages": messages})
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["success"] and result["prompt"] == "How are you?" and result["response"]
    assert result["metadata"]["messages"][0]["role"] == "system"


async def test_chat_rejects_an_unknown_role_and_empty_history(client: httpx.AsyncClient) -> None:
    bad_role = {"model": "llama3.1:8b", "messages": [{"role": "robot", "content": "x"}]}
    r = await client.post("/gateway/chat", json=bad_role)
    assert r.status_code == 422 and r.json()["errors"][0]["loc"][:3] == ["body", "messages", 0]
    r = await client.post("/gateway/chat", json={"model": "llama3.1:8b", "messages": []})
    assert r.status_code == 422


async def test_batch_keeps_prompt_order_and_isolates_failures(
    client: httpx.AsyncClient, emulator_url: str
) -> None:
    prompts = [f"prompt number {i}" for i in range(5)]
    set_faults(emulator_url, fail_next=1)
    r = await client.post(
        "/gateway/batches",
        json={"model": "llama3.1:8b", "prompts": prompts, "max_concurrent": 1},
    )
    assert r.status_code == 200, r.text
    batch = r.json()
    assert [res["prompt"] for res in batch["results"]] == prompts
    assert batch["failed"] == 1 and batch["succeeded"] == 4
    assert batch["results"][0]["success"] is False


async def test_batch_limits_are_enforced(client: httpx.AsyncClient) -> None:
    too_many = {"model": "llama3.1:8b", "prompts": ["x"] * 101}
    assert (await client.post("/gateway/batches", json=too_many)).status_code == 422
    zero = {"model": "llama3.1:8b", "prompts": ["x"], "max_concurrent": 0}
    assert (await client.post("/gateway/batches", json=zero)).status_code == 422


async def test_a_large_batch_runs_as_a_job_with_progress_events(
    client: httpx.AsyncClient,
) -> None:
    prompts = [f"question {i}" for i in range(12)]
    r = await client.post("/gateway/batches", json={"model": "llama3.1:8b", "prompts": prompts})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/gateway/batches/jobs/{job['id']}"
    events = sse_events((await client.get(f"/gateway/batches/jobs/{job['id']}/events")).text)
    names = [name for name, _ in events]
    assert names == ["progress"] * 12 + ["done"]
    indexes = sorted(json.loads(data)["index"] for name, data in events if name == "progress")
    assert indexes == list(range(12))
    done = json.loads(events[-1][1])
    assert done["status"] == "succeeded" and done["succeeded"] == 12 and done["total"] == 12
    stored = (await client.get(f"/gateway/batches/{done['batch_id']}")).json()
    assert [run["prompt"] for run in stored["runs"]] == prompts


async def test_background_can_be_asked_for_or_refused(client: httpx.AsyncClient) -> None:
    small = {"model": "llama3.1:8b", "prompts": ["a", "b"], "background": True}
    job = await client.post("/gateway/batches", json=small)
    assert job.status_code == 202
    big = {"model": "llama3.1:8b", "prompts": ["x"] * 12, "background": False}
    assert (await client.post("/gateway/batches", json=big)).status_code == 200
    assert (await client.get("/gateway/batches/jobs/nope")).status_code == 404
