"""Real Ollama replies (shared/ollama-recordings, read at test time) through the gateway's
`/api` surface: relayed byte for byte, and read correctly into the stored run.

A small replay server stands in for the backend and answers each recorded request with
its recorded status, content type and body; the gateway in front of it must pass the
bytes on unchanged and store what they say (text, token count, success or the error).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.main import create_app
from tests.api.conftest import gateway_settings
from tests.support.servers import answer_lifespan, serving_in_thread

RECORDINGS = Path(__file__).resolve().parents[4] / "shared" / "ollama-recordings"
RELAYED_PATHS = {"/api/generate", "/api/chat", "/api/embed", "/api/embeddings", "/api/show",
                 "/api/pull", "/api/version"}  # fmt: skip


def _load() -> list[tuple[str, dict[str, Any]]]:
    if not RECORDINGS.is_dir():
        return []
    cases = []
    for path in sorted(RECORDINGS.glob("*.json")):
        data = json.loads(path.read_text())
        if data.get("server") == "local" and data["request"].get("path") in RELAYED_PATHS:
            cases.append((path.name, data))
    return cases


CASES = _load()


def recorded_body(response: dict[str, Any]) -> bytes:
    lines = [line.encode() for line in response["body_lines"]]
    if "ndjson" in response["content_type"]:
        return b"".join(line + b"\n" for line in lines)
    return b"\n".join(lines)


class ReplayBackend:
    """An ASGI app answering the current recording's request with its recorded reply."""

    def __init__(self) -> None:
        self.recording: dict[str, Any] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        recording = self.recording
        if recording is not None and scope["path"] == recording["request"]["path"]:
            response = recording["response"]
            status, content_type = response["status"], response["content_type"]
            body = recorded_body(response)
        elif scope["path"] in ("/api/tags", "/api/ps"):
            status, content_type, body = 200, "application/json; charset=utf-8", b'{"models":[]}'
        else:
            status, content_type, body = 404, "text/plain", b"404 page not found"
        headers = [(b"content-type", content_type.encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def replay() -> Iterator[tuple[ReplayBackend, str]]:
    backend = ReplayBackend()
    with serving_in_thread(backend) as backend_url:
        yield backend, backend_url


@pytest.fixture(scope="module")
def gateway(
    replay: tuple[ReplayBackend, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    settings = gateway_settings([replay[1]], tmp_path_factory.mktemp("replay"))
    with serving_in_thread(create_app(settings)) as url:
        yield url


def expected_run(kind: str, lines: list[dict[str, Any]]) -> tuple[str, int | None, str | None]:
    """What a stored run of these reply lines must say: text, eval_count, error."""
    text, tokens, error = "", None, None
    for line in lines:
        if "error" in line:
            error = str(line["error"])
        piece = (
            line.get("response")
            if kind == "generate"
            else (line.get("message") or {}).get("content")
        )
        text += piece or ""
        if line.get("done"):
            tokens = line.get("eval_count")
    return text, tokens, error


@pytest.mark.skipif(not CASES, reason=f"no recordings at {RECORDINGS}")
@pytest.mark.parametrize(("name", "recording"), CASES, ids=[n for n, _ in CASES])
def test_a_recorded_reply_is_relayed_unchanged_and_stored_as_it_says(
    name: str,
    recording: dict[str, Any],
    replay: tuple[ReplayBackend, str],
    gateway: str,
) -> None:
    replay[0].recording = recording
    request, response = recording["request"], recording["response"]
    body = request.get("json")
    reply = httpx.request(
        request.get("method", "POST"),
        gateway + request["path"],
        content=json.dumps(body).encode() if body is not None else None,
        timeout=30,
    )
    assert reply.status_code == response["status"], name
    assert reply.headers["content-type"] == response["content_type"], name
    assert reply.content == recorded_body(response), name

    kind = request["path"].removeprefix("/api/")
    if kind not in ("generate", "chat") or not isinstance(body, dict) or not body.get("model"):
        return
    newest = httpx.get(
        f"{gateway}/gateway/results", params={"surface": "ollama", "limit": 1}, timeout=10
    ).json()["items"][0]
    lines = [json.loads(line) for line in response["body_lines"] if line.strip()]
    text, tokens, error = expected_run(kind, lines)
    assert newest["model_name"] == body["model"], name
    if response["status"] == 200 and error is None:
        assert newest["status"] == "succeeded", (name, newest["error_message"])
        assert newest["response"] == text, name
        assert newest["tokens_used"] == tokens, name
    else:
        assert newest["status"] == "failed", name
        assert error is not None and newest["error_message"] == error, name
