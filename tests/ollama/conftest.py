"""Managers pointed at the shared emulator, and a way to set its faults."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from app.ollama import ModelRunner, OllamaManager
from app.settings import Settings

SetFaults = Callable[..., None]


def quick_settings(url: str) -> Settings:
    return Settings(
        backends=[url], request_timeout=30, connect_timeout=2, health_timeout=1, _env_file=None
    )


@pytest.fixture
def faults(emulator_url: str) -> SetFaults:
    """Set emulator faults for the next requests (the emulator is reset before each test)."""

    def set_faults(**values: Any) -> None:
        httpx.post(f"{emulator_url}/_emulator/faults", json=values, timeout=5).raise_for_status()

    return set_faults


@pytest.fixture
def manager(emulator_url: str) -> Iterator[OllamaManager]:
    """An HTTP-mode manager on the shared emulator; results are not stored by these tests."""
    mgr = OllamaManager(
        base_url=emulator_url, auto_start_server=False, settings=quick_settings(emulator_url)
    )
    yield mgr
    mgr.cleanup()


@pytest.fixture
def runner(manager: OllamaManager) -> ModelRunner:
    return ModelRunner(manager)


@pytest.fixture
def down_url() -> str:
    """A loopback URL nobody listens on."""
    from tests.support.servers import free_port

    return f"http://127.0.0.1:{free_port()}"
