"""Placement rules replaced through one replica are followed by the other within 5 s and
outlive restarts (over GATEWAY_PLACEMENT). A `serve` process and a gateway in a thread on
one SQLite file, in front of two emulators on loopback."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest

from app.main import create_app
from app.settings import Settings
from tests.support.replicas import wait_for
from tests.support.servers import free_port, running_emulator, running_process, serving_in_thread

MODEL = "llama3.1:8b"
SHARED_WITHIN_S = 5.0


def served_by(url: str) -> str:
    body = {"model": MODEL, "prompt": "hi", "options": {"max_tokens": 3}, "save": False}
    reply = httpx.post(f"{url}/gateway/generate", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    backend: str = reply.json()["metadata"]["backend"]
    return backend


@pytest.mark.timeout(60)
def test_rules_set_on_one_replica_reach_the_other_and_outlive_restarts(tmp_path: Path) -> None:
    with running_emulator(models=(MODEL,)) as first, running_emulator(models=(MODEL,)) as second:
        database = f"sqlite+aiosqlite:///{tmp_path}/shared.db"
        env = {
            "GATEWAY_BACKENDS": f"one={first},two={second};tags=big",
            "GATEWAY_DATABASE_URL": database,
            "GATEWAY_PLACEMENT": json.dumps({MODEL: ["one"]}),
            "GATEWAY_REQUEST_TIMEOUT": "30",
            "GATEWAY_HEALTH_TIMEOUT": "5",
            "GATEWAY_LOG_LEVEL": "warning",
        }
        settings = Settings(  # the same, for the replicas run in a thread
            _env_file=None,
            backends=[f"one={first}", f"two={second};tags=big"],
            database_url=database,
            placement={MODEL: ["one"]},
            spool_dir=tmp_path / "spool",
            health_timeout=5,
        )
        port = free_port()
        a = f"http://127.0.0.1:{port}"
        serve = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
        with (
            running_process(serve, a + "/healthz", env=env),  # A: a `serve` process
            serving_in_thread(create_app(settings)) as b,  # B: another, in a thread
        ):
            assert {served_by(a), served_by(b)} == {first}
            rules = {"llama3.1:*": ["tag:big"]}
            replaced = httpx.put(f"{a}/gateway/placement", json=rules, timeout=10)
            assert replaced.status_code == 200, replaced.text
            assert all(served_by(a) == second for _ in range(5)), "A follows its change at once"
            wait_for(lambda: served_by(b) == second, SHARED_WITHIN_S, "B routes by the new rules")
            assert all(served_by(b) == second for _ in range(5))
            assert httpx.get(f"{b}/gateway/placement", timeout=10).json() == rules

        # a restart keeps them, over GATEWAY_PLACEMENT
        with serving_in_thread(create_app(settings)) as c:
            assert httpx.get(f"{c}/gateway/placement", timeout=10).json() == rules
            assert served_by(c) == second
            assert httpx.put(f"{c}/gateway/placement", json={}, timeout=10).json() == {}
            assert served_by(c) in (first, second)
