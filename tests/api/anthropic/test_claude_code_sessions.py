"""Recorded Claude Code sessions replayed through a gateway with two backends, as Claude
Code sent them (headers, `?beta=true`, streamed): each session stays on one backend, and
each turn after the first costs that backend only its new tokens, because the translation
keeps every turn's prompt a prefix of the next (the emulator counts `prompt_eval_count` past
its prompt cache, as Ollama does)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from app.main import create_app
from tests.api.anthropic.sessions import sessions, turns
from tests.api.conftest import gateway_settings, sse_events
from tests.support.servers import running_emulator, serving_in_thread

MODEL = "qwen2.5:0.5b"  # the model Claude Code was pointed at when it was recorded


def cold_prompt_tokens(emulator: str, messages: list[dict[str, Any]]) -> int:
    """The prompt tokens of `messages` on an emulator with nothing cached."""
    httpx.post(f"{emulator}/_emulator/reset", timeout=5).raise_for_status()
    reply = httpx.post(
        f"{emulator}/api/chat",
        json={"model": MODEL, "messages": messages, "stream": False,
              "options": {"num_predict": 1}},
        timeout=10,
    )  # fmt: skip
    assert reply.status_code == 200, reply.text
    count: int = reply.json()["prompt_eval_count"]
    return count


def replay(gateway: str, turn: dict[str, Any]) -> dict[str, Any]:
    """One recorded request sent as Claude Code sent it; its `message_delta` event."""
    headers = {**turn["headers"], "content-type": "application/json"}
    with httpx.stream(
        "POST",
        gateway + turn["path"],
        params={k: v[0] for k, v in turn["query"].items()},
        content=json.dumps(turn["body"]),
        headers=headers,
        timeout=30,
    ) as reply:
        assert reply.status_code == 200, reply.read()
        events = sse_events(reply.read().decode())
    assert events[0][0] == "message_start" and events[-1][0] == "message_stop", events
    (delta,) = [json.loads(data) for name, data in events if name == "message_delta"]
    return dict(delta)


def test_each_turn_costs_its_backend_only_its_new_tokens(tmp_path: Path) -> None:
    with (
        running_emulator(models=(MODEL,)) as first,
        running_emulator(models=(MODEL,)) as second,
        running_emulator(models=(MODEL,)) as measuring,
        serving_in_thread(create_app(gateway_settings([first, second], tmp_path))) as url,
    ):
        for session in sorted(sessions()):
            before = {r["id"] for r in httpx.get(f"{url}/gateway/results").json()["items"]}
            deltas = [replay(url, turn) for turn in turns(session)]
            items = httpx.get(f"{url}/gateway/results", params={"limit": 100}).json()["items"]
            runs = sorted(
                (r for r in items if r["id"] not in before), key=lambda r: r["created_at"]
            )
            assert len(runs) == len(deltas) and {r["surface"] for r in runs} == {"anthropic"}
            backends = {r["metadata"]["backend"] for r in runs}
            assert len(backends) == 1, (session, backends)  # the session stayed where it was
            full = [cold_prompt_tokens(measuring, r["metadata"]["messages"]) for r in runs]
            read = [r["metadata"]["prompt_eval_count"] for r in runs]
            assert [d["usage"]["input_tokens"] for d in deltas] == read
            for n in range(1, len(runs)):
                # turn n+1 read at most what it added to turn n's prompt
                added = full[n] - full[n - 1]
                assert 0 < read[n] <= added < full[n] / 2, (session, n, read, full)
            print(f"\n{session}: prompt tokens read {read} of {full}")  # for the record (-s)
            # Claude Code asks every model to think; this one cannot: relaxed, not refused
            assert all(r["metadata"].get("think_relaxed") for r in runs)
            assert all(d["delta"]["stop_reason"] in ("end_turn", "tool_use") for d in deltas)
