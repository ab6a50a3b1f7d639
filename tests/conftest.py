"""Fixtures shared by every test package."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.servers import running_emulator

DEFAULT_MODELS = ("llama3.1:8b", "qwen2.5:0.5b", "nomic-embed-text:latest")


@pytest.fixture(scope="session")
def shared_emulator() -> Iterator[str]:
    """One emulator for the whole session; tests must not leave faults set on it."""
    with running_emulator(models=DEFAULT_MODELS) as url:
        yield url


@pytest.fixture
def emulator_url(shared_emulator: str) -> Iterator[str]:
    """The shared emulator, reset (catalog, faults, delays) before each test."""
    httpx.post(f"{shared_emulator}/_emulator/reset", timeout=5).raise_for_status()
    yield shared_emulator
