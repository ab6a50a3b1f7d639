"""Faults and latency, set through the control endpoints."""

from __future__ import annotations

import time

import httpx
import pytest


@pytest.fixture
def api(emulator_url: str) -> httpx.Client:
    return httpx.Client(base_url=emulator_url, timeout=10)


def test_fail_next_fails_that_many_requests_then_recovers(api: httpx.Client) -> None:
    api.post("/_emulator/faults", json={"fail_next": 2, "fail_status": 503, "fail_message": "busy"})
    for _ in range(2):
        r = api.get("/api/tags")
        assert (r.status_code, r.json()) == (503, {"error": "busy"})
    assert api.get("/api/tags").status_code == 200


def test_cut_after_chunks_breaks_the_connection(api: httpx.Client) -> None:
    api.post("/_emulator/faults", json={"cut_after_chunks": 2})
    got = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        api.stream("POST", "/api/generate", json={"model": "llama3.1:8b", "prompt": "x"}) as r,
    ):
        for line in r.iter_lines():
            got.append(line)
    assert len(got) == 2


def test_stall_and_token_delays_slow_answers(api: httpx.Client) -> None:
    api.post("/_emulator/faults", json={"stall_ms": 300})
    started = time.perf_counter()
    api.get("/api/version")
    assert time.perf_counter() - started >= 0.3
    api.post("/_emulator/reset")
    api.post("/_emulator/faults", json={"token_delay_ms": 20, "first_token_delay_ms": 100})
    body = {"model": "llama3.1:8b", "prompt": "x", "options": {"num_predict": 5}, "stream": False}
    started = time.perf_counter()
    reply = api.post("/api/generate", json=body).json()
    assert time.perf_counter() - started >= 0.1 + 5 * 0.02
    assert reply["eval_duration"] == 5 * 20_000_000
    assert reply["prompt_eval_duration"] == 100_000_000


def test_reset_restores_models_faults_and_counters(api: httpx.Client) -> None:
    api.request("DELETE", "/api/delete", json={"model": "llama3.1:8b"})
    api.post("/_emulator/faults", json={"fail_next": 5})
    state = api.post("/_emulator/reset").json()
    assert "llama3.1:8b" in state["models"]
    assert state["faults"]["fail_next"] == 0 and state["requests"] == 0
    api.get("/api/tags")
    assert api.get("/_emulator/state").json()["requests"] == 1
