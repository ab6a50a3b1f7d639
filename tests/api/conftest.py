"""The gateway under uvicorn (in a thread, real HTTP on loopback) in front of the emulator."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.main import create_app
from app.settings import Settings
from tests.support.servers import free_port, running_process, serving_in_thread


def gateway_settings(backends: list[str], tmp_path: Path, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "backends": backends,
        "database_url": f"sqlite+aiosqlite:///{tmp_path}/gateway.db",
        "spool_dir": tmp_path / "spool",
        "request_timeout": 30,
        "connect_timeout": 2,
        "health_timeout": 1,
        **extra,
    }
    return Settings(_env_file=None, **values)


ClientFactory = Callable[..., Any]


@pytest.fixture
async def client(emulator_url: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a gateway whose only backend is the shared emulator."""
    app = create_app(gateway_settings([emulator_url], tmp_path))
    with serving_in_thread(app) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            yield c


@pytest.fixture
async def down_client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a gateway whose only backend does not answer."""
    app = create_app(gateway_settings([f"http://127.0.0.1:{free_port()}"], tmp_path))
    with serving_in_thread(app) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            yield c


def sse_events(text: str) -> list[tuple[str, str]]:
    """(event, data) pairs of an SSE body; comments (pings) skipped."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
        if data:
            events.append((name, "\n".join(data)))
    return events


def set_faults(emulator_url: str, **faults: Any) -> None:
    httpx.post(f"{emulator_url}/_emulator/faults", json=faults, timeout=5).raise_for_status()


@pytest.fixture
def gateway_server(emulator_url: str, tmp_path: Path) -> Iterator[str]:
    """`ollama-gateway serve` under uvicorn on a free port, in front of the shared emulator."""
    port = free_port()
    env = {
        "GATEWAY_BACKENDS": emulator_url,
        "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/served.db",
        "GATEWAY_REQUEST_TIMEOUT": "30",
        "GATEWAY_LOG_LEVEL": "warning",
    }
    args = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with running_process(args, url + "/healthz", env=env):
        yield url
