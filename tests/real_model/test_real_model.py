"""The gateway in front of a real model (SmolLM2-135M run by llama.cpp in the emulator):
the text is the model's, the counts are the engine's, and the limits are honoured."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from app.main import create_app
from tests.api.conftest import gateway_settings, sse_events
from tests.real_model.conftest import MODEL, serving_local_model
from tests.support.servers import running_emulator, serving_in_thread

GREEDY = {"temperature": 0.0, "seed": 7}


def direct(engine: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = httpx.post(f"{engine}{path}", json={**body, "stream": False}, timeout=120)
    assert reply.status_code == 200, reply.text
    data: dict[str, Any] = reply.json()
    return data


def test_a_generation_is_the_models_text_with_the_engines_counts(
    engine_url: str, real_gateway: str
) -> None:
    prompt = "Name three colors."
    engine = direct(engine_url, "/api/generate", {"model": MODEL, "prompt": prompt,
                                                  "options": {**GREEDY, "num_predict": 24}})  # fmt: skip
    assert engine["eval_count"] > 0 and engine["prompt_eval_count"] > 5
    assert engine["load_duration"] > 0 and engine["eval_duration"] > 0
    reply = httpx.post(
        f"{real_gateway}/gateway/generate",
        json={"model": MODEL, "prompt": prompt,
              "options": {"temperature": 0.0, "max_tokens": 24, "top_p": 0.9, "top_k": 40,
                          "repeat_penalty": 1.1}},
        timeout=120,
    )  # fmt: skip
    assert reply.status_code == 200, reply.text
    result = reply.json()
    # greedy decoding: the same text the engine writes when asked directly
    assert result["response"] == engine["response"] and result["response"].strip()
    assert result["tokens_used"] == engine["eval_count"]
    assert result["metadata"]["prompt_eval_count"] == engine["prompt_eval_count"]


def test_a_chat_is_answered_by_the_model(engine_url: str, real_gateway: str) -> None:
    messages = [{"role": "user", "content": "Name a fruit."}]
    engine = direct(engine_url, "/api/chat", {"model": MODEL, "messages": messages,
                                              "options": {**GREEDY, "num_predict": 30}})  # fmt: skip
    reply = httpx.post(
        f"{real_gateway}/gateway/chat",
        json={"model": MODEL, "messages": messages,
              "options": {"temperature": 0.0, "max_tokens": 30}},
        timeout=120,
    )  # fmt: skip
    result = reply.json()
    assert reply.status_code == 200 and result["response"].strip()
    assert result["response"] == engine["message"]["content"]
    assert result["tokens_used"] == engine["eval_count"]


def test_max_tokens_caps_the_output(real_gateway: str) -> None:
    body = {"model": MODEL, "prompt": "Write a long story about a dragon.",
            "options": {"max_tokens": 5, "temperature": 0.0}}  # fmt: skip
    result = httpx.post(f"{real_gateway}/gateway/generate", json=body, timeout=120).json()
    assert result["tokens_used"] == 5 and result["metadata"]["done_reason"] == "length"


def test_a_stop_sequence_stops_the_output(engine_url: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content":
            "Count from 1 to 10, separated by commas."}]}  # fmt: skip
    full = direct(engine_url, "/api/chat", {**body, "options": {**GREEDY, "num_predict": 40}})
    assert "5" in full["message"]["content"]
    stopped = direct(
        engine_url, "/api/chat", {**body, "options": {**GREEDY, "num_predict": 40, "stop": ["5"]}}
    )
    text = stopped["message"]["content"]
    assert "5" not in text and text and full["message"]["content"].startswith(text)
    assert stopped["done_reason"] == "stop" and stopped["eval_count"] < full["eval_count"]


def test_streamed_chunks_arrive_one_by_one(real_gateway: str) -> None:
    body = {"model": MODEL, "prompt": "Tell me about the sea.",
            "options": {"max_tokens": 40, "temperature": 0.0}}  # fmt: skip
    arrivals: list[float] = []
    events: list[tuple[str, str]] = []
    with httpx.stream("POST", f"{real_gateway}/gateway/generate/stream", json=body,
                      timeout=120) as reply:  # fmt: skip
        for block in reply.iter_text():
            arrivals.append(time.perf_counter())
            events.extend(sse_events(block))
    chunks = [e for e in events if e[0] == "chunk"]
    assert len(chunks) >= 20 and events[-1][0] == "result"
    assert len(arrivals) >= 10
    # about 90 tokens/s here: 40 tokens take well over 0.15 s from the first to the last
    assert arrivals[-1] - arrivals[0] > 0.15


def test_benchmark_and_comparison_report_real_speed(engine_url: str, tmp_path: Path) -> None:
    with running_emulator(models=("llama3.1:8b",)) as filler:
        settings = gateway_settings([f"real={engine_url}", f"filler={filler}"], tmp_path,
                                    request_timeout=120)  # fmt: skip
        with serving_in_thread(create_app(settings)) as url:
            options = {"max_tokens": 16, "temperature": 0.0}
            bench = httpx.post(
                f"{url}/gateway/benchmarks",
                json={"model": MODEL, "test_prompts": ["Say hi.", "Name a fruit."],
                      "options": options},
                timeout=300,
            )  # fmt: skip
            assert bench.status_code == 201, bench.text
            report = bench.json()["report"]
            assert report["successful_runs"] == 2
            # real figures: a 135M model on CPU decodes tens to hundreds of tokens/s
            assert 5 < report["avg_tokens_per_second"] < 5000
            assert 0 < report["avg_time_to_first_token"] < 30
            compared = httpx.post(
                f"{url}/gateway/comparisons",
                json={"models": [MODEL, "llama3.1:8b"], "prompt": "Say hi.", "options": options},
                timeout=300,
            ).json()["report"]
            summary = compared["summary"]
            assert set(summary["successful_models"]) == {MODEL, "llama3.1:8b"}
            assert summary["tokens_per_second"][MODEL] > 5
            ttft = compared["results"][MODEL]["metadata"]["time_to_first_token"]
            assert 0 < ttft < 30


def test_a_full_queue_answers_503_like_ollama(tmp_path: Path) -> None:
    with running_emulator(models=(MODEL,),
                          extra_args=("--engine", "llama-cpp", "--max-queue", "0")) as engine:  # fmt: skip
        import asyncio

        async def two_at_once() -> list[int]:
            body = {"model": MODEL, "prompt": "Write a poem.", "stream": False,
                    "options": {"num_predict": 30}}  # fmt: skip
            async with httpx.AsyncClient(timeout=120) as client:
                replies = await asyncio.gather(
                    *(client.post(f"{engine}/api/generate", json=body) for _ in range(3))
                )
            return sorted(r.status_code for r in replies)

        codes = asyncio.run(two_at_once())
        assert codes[0] == 200 and codes[-1] == 503
        busy = httpx.post(
            f"{engine}/api/generate",
            json={"model": MODEL, "prompt": "x", "stream": False, "options": {"num_predict": 4}},
            timeout=120,
        )
        assert busy.status_code == 200  # the queue drained


def test_embeddings_are_real_vectors(engine_url: str) -> None:
    reply = httpx.post(f"{engine_url}/api/embed",
                       json={"model": MODEL, "input": ["a cat", "a kitten", "tax law"]},
                       timeout=60).json()  # fmt: skip
    cat, kitten, tax = reply["embeddings"]
    assert len(cat) == 576 and reply["prompt_eval_count"] > 0

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cos(cat, kitten) > cos(cat, tax)


def test_serve_with_a_local_model_answers_a_chat(tmp_path: Path) -> None:
    """The README's real-model command: `serve --local-model` checks llama.cpp, starts the
    engine and the gateway together, and a chat comes back written by the model."""
    with serving_local_model(tmp_path) as (url, log):
        reply = httpx.post(
            f"{url}/api/chat",
            json={"model": MODEL, "stream": False, "options": {"num_predict": 12},
                  "messages": [{"role": "user", "content": "Name three colors."}]},
            timeout=120,
        )  # fmt: skip
        assert reply.status_code == 200, reply.text
        answer = reply.json()
        assert answer["message"]["content"].strip() and answer["eval_count"] <= 12
        assert answer["prompt_eval_count"] > 5  # counted by the engine's tokenizer
        assert "llama.cpp works here" in log.read_text()  # the check ran first
