"""Limits that protect the service, set by GATEWAY_MAX_* settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.main import create_app
from tests.api.conftest import gateway_settings
from tests.support.servers import serving_in_thread


@pytest.fixture
async def strict(emulator_url: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = gateway_settings(
        [emulator_url],
        tmp_path,
        max_body_bytes=4096,
        max_prompt_chars=50,
        max_messages=2,
        max_batch_prompts=3,
        max_comparison_models=2,
        max_context_docs=1,
        max_tokens_limit=100,
    )
    with serving_in_thread(create_app(settings)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield client


async def test_each_limit_is_a_422_naming_the_field(strict: httpx.AsyncClient) -> None:
    m = "llama3.1:8b"
    cases = [
        ("/gateway/generate", {"model": m, "prompt": "x" * 51}, ["body", "prompt"]),
        (
            "/gateway/generate",
            {"model": m, "prompt": "x", "options": {"max_tokens": 101}},
            ["body", "options", "max_tokens"],
        ),
        (
            "/gateway/generate",
            {"model": m, "prompt": "x", "context_docs": ["a", "b"]},
            ["body", "context_docs"],
        ),
        (
            "/gateway/generate/stream",
            {"model": m, "prompt": "x" * 51},
            ["body", "prompt"],
        ),
        (
            "/gateway/chat",
            {"model": m, "messages": [{"role": "user", "content": "x"}] * 3},
            ["body", "messages"],
        ),
        (
            "/gateway/chat",
            {"model": m, "messages": [{"role": "user", "content": "x" * 51}]},
            ["body", "messages", 0, "content"],
        ),
        ("/gateway/batches", {"model": m, "prompts": ["a"] * 4}, ["body", "prompts"]),
        ("/gateway/benchmarks", {"model": m, "test_prompts": ["a"] * 4}, ["body", "test_prompts"]),
        (
            "/gateway/comparisons",
            {"models": ["a:1b", "b:1b", "c:1b"], "prompt": "x"},
            ["body", "models"],
        ),
    ]
    for path, body, loc in cases:
        r = await strict.post(path, json=body)
        assert r.status_code == 422, (path, body, r.text)
        assert r.json()["errors"][0]["loc"] == loc
        assert "limit" in r.json()["errors"][0]["msg"]
    assert (await strict.get("/gateway/results")).json()["items"] == [], "nothing ran"


async def test_within_the_limits_runs(strict: httpx.AsyncClient) -> None:
    body = {"model": "llama3.1:8b", "prompt": "x" * 50, "options": {"max_tokens": 100}}
    assert (await strict.post("/gateway/generate", json=body)).status_code == 200


async def test_a_body_over_the_size_limit_is_413(strict: httpx.AsyncClient) -> None:
    big = {"model": "llama3.1:8b", "prompt": "x" * 5000}
    r = await strict.post("/gateway/generate", json=big)
    assert r.status_code == 413
    assert r.headers["content-type"].startswith("application/problem+json")

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"model": "llama3.1:8b", "prompt": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    chunked = await strict.post(
        "/gateway/generate", content=chunks(), headers={"content-type": "application/json"}
    )
    assert chunked.status_code == 413
