"""Faults and latency, set through the control endpoints."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import httpx
import pytest

from tests.support.servers import running_emulator


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


GENERATE = {"model": "llama3.1:8b", "prompt": "tell me about recursion"}


def stream_lines(api: httpx.Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    with api.stream("POST", "/api/generate", json=body) as r:
        assert r.status_code == 200
        return [json.loads(line) for line in r.iter_lines() if line]


def test_fail_after_tokens_ends_a_stream_with_an_error_line(api: httpx.Client) -> None:
    api.post("/_emulator/faults", json={"fail_after_tokens": 3, "fail_message": "runner died"})
    lines = stream_lines(api, GENERATE)
    assert [line["done"] for line in lines[:3]] == [False, False, False]
    assert lines[3:] == [{"error": "runner died"}]
    # it holds until reset
    assert stream_lines(api, GENERATE)[3:] == [{"error": "runner died"}]
    api.post("/_emulator/reset")
    assert stream_lines(api, GENERATE)[-1]["done"] is True


def test_fail_after_tokens_makes_a_whole_reply_a_500(api: httpx.Client) -> None:
    api.post("/_emulator/faults", json={"fail_after_tokens": 2})
    r = api.post("/api/chat", json={"model": "llama3.1:8b", "stream": False,
                                    "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    assert (r.status_code, r.json()) == (500, {"error": "emulated failure"})
    # a reply shorter than N tokens is not touched
    body = {**GENERATE, "stream": False, "options": {"num_predict": 2}}
    api.post("/_emulator/faults", json={"fail_after_tokens": 5})
    assert api.post("/api/generate", json=body).json()["done"] is True


def test_stall_after_tokens_pauses_a_stream_once_then_goes_on(api: httpx.Client) -> None:
    api.post("/_emulator/faults", json={"stall_after_tokens": 2, "stall_after_tokens_ms": 400})
    stamps: list[float] = []
    started = time.perf_counter()
    with api.stream("POST", "/api/generate", json=GENERATE) as r:
        for _ in r.iter_lines():
            stamps.append(time.perf_counter())
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    # The server waits 400 ms after writing the 2nd line, so the 3rd cannot arrive sooner
    # than 400 ms after the request (a gap measured on the client can be a hair shorter:
    # the 2nd line's own delivery delay is inside it).
    assert stamps[2] - started >= 0.4
    assert gaps[1] > 0.2  # the pause is between the 2nd and the 3rd line ...
    assert max(gaps[:1] + gaps[2:]) < 0.2  # ... and nowhere else
    state = api.get("/_emulator/state").json()["faults"]
    assert (state["stall_after_tokens"], state["stall_after_tokens_ms"]) == (2, 400.0)


def test_drop_connection_closes_without_a_reply_for_the_next_requests(api: httpx.Client) -> None:
    api.post("/_emulator/faults", json={"drop_connection": 2})
    for path in ("/api/tags", "/api/version"):
        with pytest.raises(httpx.RemoteProtocolError):
            api.get(path)
    assert api.get("/api/version").status_code == 200
    assert api.get("/_emulator/state").json()["faults"]["drop_connection"] == 0


def test_slow_ms_adds_a_delay_per_token(api: httpx.Client) -> None:
    body = {**GENERATE, "stream": False, "options": {"num_predict": 5}}
    api.post("/_emulator/faults", json={"slow_ms": 80})
    started = time.perf_counter()
    assert api.post("/api/generate", json=body).json()["eval_count"] == 5
    assert time.perf_counter() - started >= 5 * 0.08
    api.post("/_emulator/faults", json={"slow_ms": 0})
    started = time.perf_counter()
    api.post("/api/generate", json=body)
    assert time.perf_counter() - started < 0.3


@pytest.mark.parametrize(
    ("faults", "error"),
    [
        ({"fail_after_token": 1}, "unknown fault field(s): fail_after_token"),
        ({"drop_connection": "2"}, "invalid fault value: drop_connection must be an integer"),
        ({"fail_after_tokens": 1.5}, "invalid fault value: fail_after_tokens must be an integer"),
        ({"slow_ms": True}, "invalid fault value: slow_ms must be a number"),
        ({"stall_after_tokens_ms": -1}, "invalid fault value: stall_after_tokens_ms must not be negative"),
        ({"fail_message": 3}, "invalid fault value: fail_message must be a string"),
    ],
)  # fmt: skip
def test_unknown_or_badly_typed_faults_are_a_400_and_change_nothing(
    api: httpx.Client, faults: dict[str, Any], error: str
) -> None:
    r = api.post("/_emulator/faults", json={"fail_next": 4, **faults})
    assert (r.status_code, r.json()) == (400, {"error": error})
    assert api.get("/_emulator/state").json()["faults"]["fail_next"] == 0


def test_state_shows_every_fault_and_reset_clears_them(api: httpx.Client) -> None:
    values = {"fail_after_tokens": 1, "stall_after_tokens": 2, "stall_after_tokens_ms": 5,
              "drop_connection": 3, "slow_ms": 7}  # fmt: skip
    shown = api.post("/_emulator/faults", json=values).json()["faults"]
    assert {key: shown[key] for key in values} == values
    cleared = api.post("/_emulator/reset").json()["faults"]
    assert cleared == {"fail_next": 0, "fail_status": 500, "fail_message": "emulated failure",
                       "cut_after_chunks": None, "stall_ms": 0.0, "fail_after_tokens": None,
                       "stall_after_tokens": None, "stall_after_tokens_ms": 0.0,
                       "drop_connection": 0, "slow_ms": 0.0}  # fmt: skip


def test_reply_tokens_makes_long_streams_and_num_predict_smaller_wins() -> None:
    with running_emulator(extra_args=["--reply-tokens", "500"]) as url:
        api = httpx.Client(base_url=url, timeout=20)
        lines = stream_lines(api, GENERATE)
        assert len(lines) == 501
        assert all(line["done"] is False for line in lines[:500])
        assert lines[-1]["done_reason"] == "stop" and lines[-1]["eval_count"] == 500
        again = stream_lines(api, GENERATE)
        assert [line["response"] for line in again] == [line["response"] for line in lines]
        short = stream_lines(api, {**GENERATE, "options": {"num_predict": 7}})
        assert len(short) == 8 and short[-1]["done_reason"] == "length"
        chat = {"model": "llama3.1:8b", "stream": False,
                "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
        assert api.post("/api/chat", json=chat).json()["eval_count"] == 500
