"""/gateway/results, /gateway/batches|benchmarks|comparisons: what runs leave behind."""

from __future__ import annotations

import asyncio
import json
import time

import httpx

from tests.api.conftest import set_faults, sse_events


async def test_a_generation_is_stored_and_served_by_id(client: httpx.AsyncClient) -> None:
    made = (
        await client.post("/gateway/generate", json={"model": "llama3.1:8b", "prompt": "hi"})
    ).json()
    assert made["id"]
    stored = (await client.get(f"/gateway/results/{made['id']}")).json()
    assert stored["response"] == made["response"] and stored["kind"] == "generate"
    assert stored["status"] == "succeeded" and stored["created_at"]


async def test_save_false_stores_nothing(client: httpx.AsyncClient) -> None:
    made = await client.post(
        "/gateway/generate", json={"model": "llama3.1:8b", "prompt": "hi", "save": False}
    )
    assert made.json()["id"] is None
    assert (await client.get("/gateway/results")).json()["items"] == []


async def test_a_failed_run_is_stored_and_named_by_the_problem(client: httpx.AsyncClient) -> None:
    r = await client.post("/gateway/generate", json={"model": "nope:1b", "prompt": "x"})
    assert r.status_code == 404
    stored = (await client.get(f"/gateway/results/{r.json()['result_id']}")).json()
    assert stored["status"] == "failed" and "nope:1b" in stored["error_message"]


async def test_results_filter_and_paginate(client: httpx.AsyncClient) -> None:
    for i in range(5):
        await client.post("/gateway/generate", json={"model": "llama3.1:8b", "prompt": f"p{i}"})
    await client.post("/gateway/generate", json={"model": "qwen2.5:0.5b", "prompt": "q"})
    await client.post("/gateway/generate", json={"model": "nope:1b", "prompt": "f"})
    qwen = (await client.get("/gateway/results", params={"model": "qwen2.5:0.5b"})).json()
    assert [r["prompt"] for r in qwen["items"]] == ["q"]
    failed = (await client.get("/gateway/results", params={"success": "false"})).json()
    assert [r["prompt"] for r in failed["items"]] == ["f"]
    seen, cursor = [], None
    while True:
        params = {"model": "llama3.1:8b", "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/gateway/results", params=params)).json()
        seen += [r["prompt"] for r in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["p4", "p3", "p2", "p1", "p0"]
    future = (await client.get("/gateway/results", params={"since": "2100-01-01T00:00:00Z"})).json()
    assert future["items"] == []


async def test_bad_list_parameters_are_422(client: httpx.AsyncClient) -> None:
    for params in ({"cursor": "nonsense"}, {"limit": 0}, {"since": "yesterday"}, {"kind": "x"}):
        assert (await client.get("/gateway/results", params=params)).status_code == 422, params


async def test_delete_stats_and_cleanup(client: httpx.AsyncClient) -> None:
    made = (
        await client.post("/gateway/generate", json={"model": "llama3.1:8b", "prompt": "a"})
    ).json()
    await client.post("/gateway/generate", json={"model": "llama3.1:8b", "prompt": "b"})
    stats = (await client.get("/gateway/results/stats")).json()
    assert stats["by_type"]["results"]["count"] == 2
    assert (await client.delete(f"/gateway/results/{made['id']}")).status_code == 204
    assert (await client.get(f"/gateway/results/{made['id']}")).status_code == 404
    assert (await client.delete(f"/gateway/results/{made['id']}")).status_code == 404
    kept = await client.post("/gateway/results/cleanup", json={"days_old": 1})
    assert kept.json() == {"removed": 0}
    removed = await client.post("/gateway/results/cleanup", json={"days_old": 0})
    assert removed.json() == {"removed": 1}
    assert (await client.post("/gateway/results/cleanup", json={"days_old": -1})).status_code == 422


async def test_a_batch_is_stored_with_its_runs(client: httpx.AsyncClient) -> None:
    body = {"model": "llama3.1:8b", "prompts": ["a", "b", "c"], "name": "nightly"}
    batch = (await client.post("/gateway/batches", json=body)).json()
    stored = (await client.get(f"/gateway/batches/{batch['id']}")).json()
    assert stored["name"] == "nightly" and stored["total"] == 3
    assert [r["prompt"] for r in stored["runs"]] == ["a", "b", "c"]
    listed = (await client.get("/gateway/batches")).json()["items"]
    assert [b["id"] for b in listed] == [batch["id"]]


async def test_a_benchmark_reports_speed_and_latency(client: httpx.AsyncClient) -> None:
    body = {"model": "llama3.1:8b", "test_prompts": ["one", "two", "three"]}
    r = await client.post("/gateway/benchmarks", json=body)
    assert r.status_code == 201, r.text
    made = r.json()
    report = made["report"]
    assert report["success_rate"] == 1.0 and report["avg_tokens_per_second"] > 0
    assert report["p50_latency"] <= report["p95_latency"]
    assert report["avg_time_to_first_token"] is not None
    assert len(report["individual_results"]) == 3
    stored = (await client.get(f"/gateway/benchmarks/{made['id']}")).json()
    assert len(stored["runs"]) == 3 and stored["model"] == "llama3.1:8b"
    assert [b["id"] for b in (await client.get("/gateway/benchmarks")).json()["items"]] == [
        made["id"]
    ]


async def test_a_comparison_names_the_fastest_model(client: httpx.AsyncClient) -> None:
    body = {"models": ["llama3.1:8b", "qwen2.5:0.5b", "nope:1b"], "prompt": "Explain recursion."}
    made = (await client.post("/gateway/comparisons", json=body)).json()
    summary = made["report"]["summary"]
    assert summary["fastest_model"] in {"llama3.1:8b", "qwen2.5:0.5b"}
    assert set(summary["failures"]) == {"nope:1b"}
    assert set(summary["response_lengths"]) == set(body["models"])
    stored = (await client.get(f"/gateway/comparisons/{made['id']}")).json()
    assert sorted(r["model_name"] for r in stored["runs"]) == sorted(body["models"])
    listed = (await client.get("/gateway/comparisons")).json()["items"]
    assert [c["id"] for c in listed] == [made["id"]] and listed[0]["models"] == body["models"]
    repeated = {"models": ["llama3.1:8b", "llama3.1:8b"], "prompt": "x"}
    assert (await client.post("/gateway/comparisons", json=repeated)).status_code == 422


async def test_unknown_report_ids_are_404(client: httpx.AsyncClient) -> None:
    for kind in ("batches", "benchmarks", "comparisons"):
        assert (await client.get(f"/gateway/{kind}/{'0' * 32}")).status_code == 404


async def test_a_streamed_run_is_stored_once_it_ends(client: httpx.AsyncClient) -> None:
    r = await client.post("/gateway/generate/stream", json={"model": "llama3.1:8b", "prompt": "s"})
    result = json.loads(sse_events(r.text)[-1][1])
    stored = (await client.get(f"/gateway/results/{result['id']}")).json()
    assert stored["kind"] == "stream" and stored["response"] == result["response"]


def test_a_client_that_disconnects_mid_stream_leaves_a_cancelled_partial_result(
    gateway_server: str, emulator_url: str
) -> None:
    set_faults(emulator_url, token_delay_ms=100)
    body = {"model": "llama3.1:8b", "prompt": "a long answer please"}
    received = []
    with httpx.Client(base_url=gateway_server, timeout=30) as http:
        with http.stream("POST", "/gateway/generate/stream", json=body) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    received.append(json.loads(line[5:]))
                if len(received) == 3:
                    break
        deadline = time.monotonic() + 10
        items: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            items = http.get("/gateway/results").json()["items"]
            if items:
                break
            time.sleep(0.1)
    assert len(items) == 1, "the cancelled run was not stored"
    [stored] = items
    assert stored["status"] == "cancelled" and stored["success"] is False
    partial = stored["metadata"]["partial_response"]  # type: ignore[index]
    assert partial.startswith("".join(c["content"] for c in received))


async def test_nothing_waits_on_storage_while_tokens_stream(client: httpx.AsyncClient) -> None:
    # Many concurrent streams: every one ends with its stored result.
    body = {"model": "llama3.1:8b", "prompt": "concurrent"}
    replies = await asyncio.gather(
        *(client.post("/gateway/generate/stream", json=body) for _ in range(10))
    )
    ids = {json.loads(sse_events(r.text)[-1][1])["id"] for r in replies}
    assert len(ids) == 10 and None not in ids
