"""Fidelity against real Ollama traffic (shared/ollama-recordings, read at test time).

Each recorded generate/chat request is replayed against an emulator that has the recorded
model installed; its lines must have the recorded lines' keys and value types, middle
chunk against middle chunk and final against final. Key *order* is checked against the
reference instead: recordings from older servers put `done_reason` before `done`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.servers import running_emulator

RECORDINGS = Path(__file__).resolve().parents[3] / "shared" / "ollama-recordings"
# Keys a real server adds that this emulator does not produce (documented gaps).
NOT_EMULATED = {"logprobs", "images", "tool_calls", "thinking"}


def _load() -> list[tuple[str, dict[str, Any]]]:
    if not RECORDINGS.is_dir():
        return []
    found = []
    for path in sorted(RECORDINGS.glob("*.json")):
        data = json.loads(path.read_text())
        request, response = data.get("request", {}), data.get("response", {})
        if request.get("path") not in ("/api/generate", "/api/chat"):
            continue
        body = request.get("json")
        if not isinstance(body, dict) or not body.get("model") or response.get("status") != 200:
            continue
        if data.get("server") != "local" or body.get("tools") or body.get("images"):
            continue
        if any(m.get("images") or m.get("tool_calls") for m in body.get("messages") or []):
            continue
        found.append((path.name, data))
    return found


CASES = _load()


@pytest.fixture(scope="module")
def replay_url() -> Iterator[str]:
    models = sorted({str(d["request"]["json"]["model"]) for _, d in CASES})
    with running_emulator(models=models) as url:
        yield url


def _shape(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _shape(v) for k, v in obj.items() if k not in NOT_EMULATED}
    if isinstance(obj, bool):
        return "bool"
    if isinstance(obj, int | float):
        return "number"
    if isinstance(obj, list):
        return "list"
    return type(obj).__name__


def _final_and_middle(lines: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return lines[-1], [line for line in lines[:-1] if not line.get("done")]


@pytest.mark.skipif(not CASES, reason=f"no recordings at {RECORDINGS}")
@pytest.mark.parametrize(("name", "recording"), CASES, ids=[n for n, _ in CASES])
def test_replayed_request_has_the_recorded_shape(
    name: str, recording: dict[str, Any], replay_url: str
) -> None:
    request, response = recording["request"], recording["response"]
    body = dict(request["json"])
    body.pop("think", None)  # the recorded models' thinking support differs from ours
    options = body.get("options")
    if isinstance(options, dict):
        options.pop("think", None)
    reply = httpx.post(replay_url + request["path"], json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    recorded = [json.loads(line) for line in response["body_lines"]]
    got = [json.loads(line) for line in reply.text.splitlines() if line]
    streamed = len(recorded) > 1 or body.get("stream") is not False
    assert reply.headers["content-type"].split(";")[0] == response["content_type"].split(";")[0]
    rec_final, rec_middle = _final_and_middle(recorded)
    got_final, got_middle = _final_and_middle(got)
    # A recorded load-only reply has no metrics; compare only keys both kinds of reply share.
    assert set(_shape(got_final)) >= set(_shape(rec_final)) - {"context"} or "load" in str(
        rec_final.get("done_reason")
    ), (name, sorted(_shape(rec_final)), sorted(_shape(got_final)))
    for key, kind in _shape(rec_final).items():
        if key in _shape(got_final) and key != "message":
            assert _shape(got_final)[key] == kind, (name, key)
    if streamed and rec_middle and got_middle:
        assert _shape(got_middle[0]) == _shape(rec_middle[0]), name
