"""Placement rules replaced through one replica are followed by the other within 5 s and
outlive restarts (over GATEWAY_PLACEMENT). Two real `serve` processes on one SQLite file,
in front of two emulators on loopback."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from app.main import create_app
from app.settings import Settings
from tests.support.servers import free_port, running_emulator, running_process, serving_in_thread

MODEL = "llama3.1:8b"
SHARED_WITHIN_S = 5.0


@contextlib.contextmanager
def two_replicas(env: dict[str, str]) -> Iterator[tuple[str, str]]:
    urls = []
    with contextlib.ExitStack() as stack:
        for _ in range(2):  # one after the other: the first creates the schema
            port = free_port()
            args = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
            url = f"http://127.0.0.1:{port}"
            stack.enter_context(running_process(args, url + "/healthz", env=env))
            urls.append(url)
        yield urls[0], urls[1]


def served_by(url: str) -> str:
    body = {"model": MODEL, "prompt": "hi", "options": {"max_tokens": 3}, "save": False}
    reply = httpx.post(f"{url}/gateway/generate", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    backend: str = reply.json()["metadata"]["backend"]
    return backend


def within(seconds: float, check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds:g} s: {what}")
        time.sleep(0.1)


@pytest.mark.timeout(90)
def test_rules_set_on_one_replica_reach_the_other_and_outlive_restarts(tmp_path: Path) -> None:
    with running_emulator(models=(MODEL,)) as first, running_emulator(models=(MODEL,)) as second:
        env = {
            "GATEWAY_BACKENDS": f"one={first},two={second};tags=big",
            "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/shared.db",
            "GATEWAY_PLACEMENT": json.dumps({MODEL: ["one"]}),
            "GATEWAY_REQUEST_TIMEOUT": "30",
            "GATEWAY_HEALTH_TIMEOUT": "1",
            "GATEWAY_LOG_LEVEL": "warning",
        }
        with two_replicas(env) as (a, b):
            assert {served_by(a), served_by(b)} == {first}
            rules = {"llama3.1:*": ["tag:big"]}
            replaced = httpx.put(f"{a}/gateway/placement", json=rules, timeout=10)
            assert replaced.status_code == 200, replaced.text
            assert all(served_by(a) == second for _ in range(5)), "A follows its change at once"
            within(SHARED_WITHIN_S, lambda: served_by(b) == second, "B routes by the new rules")
            assert all(served_by(b) == second for _ in range(5))
            assert httpx.get(f"{b}/gateway/placement", timeout=10).json() == rules

        # a restart (here: a gateway in a thread on the same database) keeps them
        settings = Settings(
            _env_file=None,
            backends=[f"one={first}", f"two={second};tags=big"],
            database_url=env["GATEWAY_DATABASE_URL"],
            placement={MODEL: ["one"]},
            spool_dir=tmp_path / "spool",
        )
        with serving_in_thread(create_app(settings)) as c:
            assert httpx.get(f"{c}/gateway/placement", timeout=10).json() == rules
            assert served_by(c) == second
