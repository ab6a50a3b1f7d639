"""Fixtures for the backend client tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.support.servers import free_port


@pytest.fixture
def faults(emulator_url: str) -> Callable[..., None]:
    def set_faults(**values: Any) -> None:
        httpx.post(f"{emulator_url}/_emulator/faults", json=values, timeout=5).raise_for_status()

    return set_faults


@pytest.fixture
def down_url() -> str:
    return f"http://127.0.0.1:{free_port()}"
