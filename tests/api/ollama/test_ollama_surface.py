"""Ollama's own API at `/api`: the official `ollama` client, pointed at the gateway, works
unchanged, the pool routes its requests, and its runs are stored as surface `ollama`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from app.main import create_app
from tests.api.conftest import gateway_settings, set_faults
from tests.support.servers import running_emulator, serving_in_thread


@pytest.fixture
def gateway_url(emulator_url: str, tmp_path: Path) -> Iterator[str]:
    with serving_in_thread(create_app(gateway_settings([emulator_url], tmp_path))) as url:
        yield url


def stored(gateway: str, **query: Any) -> list[dict[str, Any]]:
    reply = httpx.get(f"{gateway}/gateway/results", params=query, timeout=10)
    reply.raise_for_status()
    items: list[dict[str, Any]] = reply.json()["items"]
    return items


def test_the_official_client_works_through_the_gateway(gateway_url: str) -> None:
    client = ollama.Client(host=gateway_url)
    names = {m.model for m in client.list().models}
    assert {"llama3.1:8b", "qwen2.5:0.5b"} <= names

    statuses = [p.status for p in client.pull("phi3:mini", stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert "phi3:mini" in {m.model for m in client.list().models}

    reply = client.generate(model="llama3.1:8b", prompt="Hello", options={"num_predict": 5})
    assert reply.done and reply.eval_count == 5 and reply.done_reason == "length"
    pieces = list(client.generate(model="llama3.1:8b", prompt="Hello", stream=True))
    assert len(pieces) > 2 and pieces[-1].done and not any(p.done for p in pieces[:-1])
    assert "".join(p.response for p in pieces[:-1])

    chat = client.chat(model="llama3.1:8b", messages=[{"role": "user", "content": "Hi"}])
    assert chat.message.role == "assistant" and chat.message.content
    streamed = list(
        client.chat(model="llama3.1:8b", messages=[{"role": "user", "content": "Hi"}], stream=True)
    )
    assert streamed[-1].done and "".join(p.message.content or "" for p in streamed)

    shown = client.show("llama3.1:8b")
    assert shown.details is not None and shown.details.family == "llama"
    embedded = client.embed(model="nomic-embed-text", input=["a", "b"])
    assert len(embedded.embeddings) == 2
    assert any(m.model == "llama3.1:8b" for m in client.ps().models)

    client.copy("llama3.1:8b", "copy:v1")
    assert "copy:v1" in {m.model for m in client.list().models}
    client.delete("copy:v1")
    assert "copy:v1" not in {m.model for m in client.list().models}

    with pytest.raises(ollama.ResponseError) as raised:
        client.generate(model="nope:1b", prompt="x")
    assert raised.value.status_code == 404 and raised.value.error == "model 'nope:1b' not found"
    with pytest.raises(ollama.ResponseError) as raised:
        client.chat(model="nope:1b", messages=[{"role": "user", "content": "x"}])
    assert raised.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as raised:
        client.delete("nope:1b")
    assert raised.value.status_code == 404


async def test_the_async_client_streams_a_chat_and_a_generation(gateway_url: str) -> None:
    client = ollama.AsyncClient(host=gateway_url)
    parts = [
        part.message.content
        async for part in await client.chat(
            model="llama3.1:8b", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
    ]
    assert "".join(p or "" for p in parts)
    pieces = [p async for p in await client.generate("qwen2.5:0.5b", "Hello", stream=True)]
    assert pieces[-1].done and pieces[-1].eval_count
    with pytest.raises(ollama.ResponseError):
        await client.generate(model="nope:1b", prompt="x")


def test_replies_are_the_backends_bytes(emulator_url: str, gateway_url: str) -> None:
    """Same request direct and through the gateway: same status, type and fields, and the
    deterministic text is identical (only timings differ)."""
    cases = [
        ("POST", "/api/generate", {"model": "llama3.1:8b", "prompt": "Hi", "stream": False,
                                   "options": {"seed": 7, "num_predict": 8}}),
        ("POST", "/api/chat", {"model": "llama3.1:8b", "stream": False, "options": {"seed": 3},
                               "messages": [{"role": "user", "content": "Hi"}]}),
        ("POST", "/api/show", {"model": "llama3.1:8b"}),
        ("POST", "/api/generate", {"model": "nope:1b", "prompt": "Hi"}),
        ("POST", "/api/chat", {"model": "llama3.1:8b"}),
        ("POST", "/api/generate", {"model": "llama3.1:8b", "prompt": "Hi", "options": 3}),
        ("POST", "/api/embed", {"model": "nope:1b", "input": "x"}),
        ("GET", "/api/version", None),
        ("GET", "/", None),
    ]  # fmt: skip
    # and `prompt_eval_count`: the second of two same requests finds its prompt cached
    timing = {"total_duration", "load_duration", "prompt_eval_duration", "eval_duration",
              "created_at", "prompt_eval_count"}  # fmt: skip
    for method, path, body in cases:
        direct = httpx.request(method, emulator_url + path, json=body, timeout=10)
        relayed = httpx.request(method, gateway_url + path, json=body, timeout=10)
        assert relayed.status_code == direct.status_code, (path, body)
        assert relayed.headers["content-type"] == direct.headers["content-type"], path
        if direct.headers["content-type"].startswith("application/json"):
            a, b = direct.json(), relayed.json()
            assert {k: v for k, v in a.items() if k not in timing} == {
                k: v for k, v in b.items() if k not in timing
            }, (path, body)
        else:
            assert relayed.text == direct.text


def test_unknown_fields_reach_the_backend_and_bad_bodies_get_ollamas_errors(
    gateway_url: str,
) -> None:
    body = {"model": "llama3.1:8b", "prompt": "Hi", "stream": False, "some_future_field": 1}
    assert httpx.post(f"{gateway_url}/api/generate", json=body, timeout=10).status_code == 200
    bad = httpx.post(
        f"{gateway_url}/api/generate",
        content=b"{not json",
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert bad.status_code == 400 and "error" in bad.json()
    wrong_type = httpx.post(
        f"{gateway_url}/api/chat", json={"model": "llama3.1:8b", "messages": "hi"}, timeout=10
    )
    assert wrong_type.status_code == 400 and "cannot unmarshal" in wrong_type.json()["error"]
    assert httpx.get(f"{gateway_url}/api/nothing-here", timeout=10).status_code == 404
    assert httpx.head(f"{gateway_url}/", timeout=10).status_code == 200


def test_a_stream_is_relayed_line_by_line(emulator_url: str, gateway_url: str) -> None:
    set_faults(emulator_url, token_delay_ms=30)
    body = {"model": "llama3.1:8b", "prompt": "Hi", "options": {"num_predict": 12}}
    arrivals: list[float] = []
    lines: list[dict[str, Any]] = []
    import time

    with httpx.stream("POST", f"{gateway_url}/api/generate", json=body, timeout=30) as reply:
        assert reply.headers["content-type"] == "application/x-ndjson"
        for line in reply.iter_lines():
            if line:
                arrivals.append(time.perf_counter())
                lines.append(json.loads(line))
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    assert len(lines) == 13
    # the first line arrived well before the last: nothing was held back to the end
    assert arrivals[-1] - arrivals[0] > 0.2


def test_runs_through_api_are_stored_as_surface_ollama(gateway_url: str) -> None:
    client = ollama.Client(host=gateway_url)
    client.generate(model="llama3.1:8b", prompt="stored plain", options={"num_predict": 4})
    list(client.chat(model="llama3.1:8b", messages=[{"role": "user", "content": "stored chat"}],
                     stream=True))  # fmt: skip
    with pytest.raises(ollama.ResponseError):
        client.generate(model="nope:1b", prompt="stored failure")
    runs = stored(gateway_url, surface="ollama")
    by_prompt = {r["prompt"]: r for r in runs}
    assert by_prompt["stored plain"]["kind"] == "generate"
    assert by_prompt["stored plain"]["status"] == "succeeded"
    assert by_prompt["stored plain"]["tokens_used"] == 4
    assert by_prompt["stored chat"]["kind"] == "stream" and by_prompt["stored chat"]["response"]
    assert by_prompt["stored failure"]["status"] == "failed"
    assert "not found" in by_prompt["stored failure"]["error_message"]
    assert all(r["surface"] == "ollama" for r in runs)
    assert stored(gateway_url, surface="openai") == []


def test_storing_api_runs_can_be_turned_off(emulator_url: str, tmp_path: Path) -> None:
    settings = gateway_settings([emulator_url], tmp_path, store_ollama_api=False)
    with serving_in_thread(create_app(settings)) as url:
        ollama.Client(host=url).generate(model="llama3.1:8b", prompt="not kept")
        assert stored(url) == []


def test_two_backends_are_one_ollama(tmp_path: Path) -> None:
    """Tags list both backends' models; a chat for a model only the second has reaches it."""
    with (
        running_emulator(models=("llama3.1:8b",)) as first,
        running_emulator(models=("qwen2.5:0.5b", "smollm2:135m")) as second,
    ):
        settings = gateway_settings([f"one={first}", f"two={second}"], tmp_path)
        with serving_in_thread(create_app(settings)) as url:
            client = ollama.Client(host=url)
            listed = client.list().models
            names = [m.model for m in listed]
            assert sorted(names) == ["llama3.1:8b", "qwen2.5:0.5b", "smollm2:135m"]
            modified = [m.modified_at for m in listed]
            assert modified == sorted(modified, reverse=True)  # newest first, as Ollama
            reply = client.chat(
                model="smollm2:135m", messages=[{"role": "user", "content": "which?"}]
            )
            assert reply.message.content
            served = httpx.get(f"{second}/_emulator/state", timeout=5).json()
            other = httpx.get(f"{first}/_emulator/state", timeout=5).json()
            assert "smollm2:135m" in json.dumps(served["loaded"])
            assert "smollm2:135m" not in json.dumps(other["loaded"])
            runs = stored(url, surface="ollama")
            assert runs[0]["backend"] == second


def test_a_stream_cut_by_the_backend_ends_with_an_error_line_and_a_failed_run(
    emulator_url: str, gateway_url: str
) -> None:
    set_faults(emulator_url, cut_after_chunks=3)
    client = ollama.Client(host=gateway_url)
    received: list[str] = []
    with pytest.raises(ollama.ResponseError) as raised:
        for part in client.generate(model="llama3.1:8b", prompt="cut short", stream=True):
            received.append(part.response)
    assert len(received) == 3 and "mid-reply" in raised.value.error, raised.value
    run = stored(gateway_url, surface="ollama")[0]
    assert run["prompt"] == "cut short" and run["status"] == "failed"
    assert run["metadata"]["partial_response"] == "".join(received)


def test_a_client_that_leaves_mid_stream_leaves_a_cancelled_run(
    emulator_url: str, gateway_url: str
) -> None:
    import time

    set_faults(emulator_url, token_delay_ms=50)
    body = {"model": "llama3.1:8b", "prompt": "left early", "options": {"num_predict": 40}}
    with httpx.stream("POST", f"{gateway_url}/api/generate", json=body, timeout=30) as reply:
        lines = reply.iter_lines()
        received = [json.loads(next(lines))["response"] for _ in range(3)]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        runs = [r for r in stored(gateway_url, surface="ollama") if r["prompt"] == "left early"]
        if runs:
            break
        time.sleep(0.1)
    assert runs and runs[0]["status"] == "cancelled"
    assert runs[0]["metadata"]["partial_response"].startswith("".join(received))
