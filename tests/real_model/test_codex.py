"""Codex CLI through the gateway to a real model (SmolLM2-135M run by llama.cpp).

Codex's prompt is large (its base instructions and skills, about 5,000 tokens of system
prompt, plus 18 KB of tools the engine's chat template does not render), more than the
engine's 2,048-token context. As Ollama's runner does with an over-long prompt, the engine
keeps the prompt's end (half the context: the latest turns) and the model answers from
that; the turn finishes, with the model's own text."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.main import create_app
from tests.api.conftest import gateway_settings
from tests.clients.conftest import codex_bin  # noqa: F401  (the fixture, installed once)
from tests.clients.test_codex import ADMIN_KEY, codex_for, stored_runs
from tests.real_model.conftest import MODEL
from tests.support.servers import serving_in_thread

CONTEXT = 2048
"""The engine's context (`DEFAULT_NUM_CTX` of app/emulator/llama_engine.py)."""
TURN_TIMEOUT_S = 600
"""A CPU evaluating 1,000 prompt tokens: seconds on an idle machine, minutes on a busy one."""


@pytest.fixture
def keyed_gateway(engine_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    settings = gateway_settings([engine_url], tmp_path, admin_key=ADMIN_KEY, request_timeout=300)
    with serving_in_thread(create_app(settings)) as url:
        made = httpx.post(f"{url}/gateway/keys", json={"name": "codex", "scope": "user"},
                          headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)  # fmt: skip
        assert made.status_code == 201, made.text
        yield url, made.json()["key"]


@pytest.mark.timeout(TURN_TIMEOUT_S + 120)
def test_codex_exec_finishes_a_turn_on_a_real_model(
    codex_bin: Path,  # noqa: F811
    keyed_gateway: tuple[str, str],
    tmp_path: Path,
) -> None:
    url, key = keyed_gateway
    idle = f"stream_idle_timeout_ms = {TURN_TIMEOUT_S * 1000}\n"
    codex = codex_for(codex_bin, url, key, tmp_path, model=MODEL, extra=idle)
    codex.timeout = TURN_TIMEOUT_S
    done = codex.exec("Say hello in one short sentence.")
    assert done.returncode == 0, done.stderr[-3000:]
    [run] = stored_runs(url)
    assert run["success"] and run["response"].strip(), run
    assert run["response"].strip() in done.stdout
    meta = run["metadata"]
    print(f"\ncodex on {MODEL}: system prompt {len(meta['request']['system'])} characters, "
          f"prompt_eval_count {meta['prompt_eval_count']}, eval_count {meta['eval_count']}, "
          f"answer {run['response'].strip()!r}")  # for the record (-s)  # fmt: skip
    # the prompt was over the context: its end was kept, and the answer fit in the rest
    assert len(meta["request"]["system"]) > 4 * CONTEXT
    assert meta["prompt_eval_count"] <= CONTEXT // 2
    assert meta["prompt_eval_count"] + meta["eval_count"] < CONTEXT
