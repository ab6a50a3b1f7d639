"""Each backend's load over the last minutes (`GET /gateway/backends/history`): requests
finished between samples add up to the requests served, a run in flight shows as running,
and a bad `minutes` is a 422. Two emulators on loopback, samples every 0.2 s."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx

from app.main import create_app
from tests.api.conftest import gateway_settings
from tests.support.replicas import wait_for
from tests.support.servers import running_emulator, serving_in_thread

MODEL = "llama3.1:8b"


def history(url: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{url}/gateway/backends/history", params=params, timeout=10)


def finished(url: str) -> dict[str, int]:
    """Requests finished per backend over the whole history (backends with none left out)."""
    totals: dict[str, int] = {}
    for sample in history(url, minutes=15).json()["samples"]:
        for name, load in sample["backends"].items():
            totals[name] = totals.get(name, 0) + load["finished"]
    return {name: count for name, count in totals.items() if count}


def test_the_history_counts_what_each_backend_served_and_what_runs_now(tmp_path: Path) -> None:
    with (
        running_emulator(models=(MODEL,), token_delay_ms=40) as one,
        running_emulator(models=(MODEL,), token_delay_ms=40) as two,
    ):
        settings = gateway_settings(
            [f"one={one}", f"two={two}"], tmp_path, load_sample_interval=0.2
        )
        with serving_in_thread(create_app(settings)) as url:
            wait_for(lambda: len(history(url).json()["samples"]) >= 2, 10, "two samples")
            body = {"model": MODEL, "prompt": "hi", "options": {"max_tokens": 4}}
            served: dict[str, int] = {}
            for _ in range(6):
                reply = httpx.post(f"{url}/gateway/generate", json=body, timeout=30)
                assert reply.status_code == 200, reply.text
                backend = {one: "one", two: "two"}[reply.json()["metadata"]["backend"]]
                served[backend] = served.get(backend, 0) + 1
            wait_for(lambda: finished(url) == served, 10, f"finished counts {served}")

            # A slow run (40 ms a token, 40 tokens) is running at some sample.
            slow = {"model": MODEL, "prompt": "slow", "options": {"max_tokens": 40}}
            ran: list[int] = []
            worker = threading.Thread(
                target=lambda: ran.append(
                    httpx.post(f"{url}/gateway/generate", json=slow, timeout=30).status_code
                )
            )
            worker.start()
            worker.join(30)
            assert ran == [200]
            samples = history(url).json()["samples"]
            assert any(sum(b["running"] for b in s["backends"].values()) == 1 for s in samples)
            assert all(b["queued"] == 0 for s in samples for b in s["backends"].values())
            assert sorted(samples[-1]["backends"]) == ["one", "two"]
            shown = history(url).json()
            assert shown["every_seconds"] == 0.2
            assert all(0 < s["seconds"] < 5 for s in shown["samples"][1:])

            # Only the last `minutes` are answered; out of range is a 422 naming the field.
            assert len(history(url, minutes=0.001).json()["samples"]) <= 1  # 60 ms: one at most
            for bad in (0, 16, "soon"):
                refused = history(url, minutes=bad)
                assert refused.status_code == 422, refused.text
                assert "minutes" in refused.text
