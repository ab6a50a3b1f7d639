"""Streamed runs on every surface, read as a client reads them: the text, and how it ended.

`/gateway/{chat,generate}/stream` (SSE `chunk` events, then `result` or `error`),
`/api/{chat,generate}` (NDJSON lines, the last `done` or an `error` line),
`/v1/{chat/completions,completions}` with `stream: true` (SSE `data:` lines, then
`[DONE]` or a last `error`), `/v1/messages` with `stream: true` (Anthropic's events:
`text_delta`s, then `message_delta` and `message_stop`, or an `error` event), and
`/v1/responses` (`RESPONSES`: typed events, the last `response.completed` or another end;
not in `SURFACES`, its tests name it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.api.conftest import sse_events

SURFACES = (
    "gateway-chat",
    "gateway-generate",
    "api-chat",
    "api-generate",
    "v1-chat",
    "v1-completion",
    "v1-messages",
)
RESPONSES = "v1-responses"
STORED_AS = {"api": "ollama", "v1-messages": "anthropic", RESPONSES: "responses"}
"""The surface a stream's run is stored under, by the stream's surface (or its prefix)."""


def stored_surface(surface: str) -> str:
    """The `surface` a run streamed on `surface` is stored with."""
    return (
        STORED_AS.get(surface)
        or STORED_AS.get(surface.split("-")[0])
        or ("gateway" if surface.startswith("gateway") else "openai")
    )


@dataclass
class Streamed:
    surface: str
    prompt: str
    status: int
    pieces: list[str] = field(default_factory=list)
    ok: bool = False
    """The stream ended with a success (a `result` event, a `done` line, `[DONE]`)."""
    final: dict[str, Any] = field(default_factory=dict)
    """The `result` event, the `done` line, or the error."""

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def request(
    surface: str, model: str, prompt: str, limit: int | None = None
) -> tuple[str, dict[str, Any]]:
    """The path and body of a streamed run of `prompt` on `surface` (at most `limit`
    tokens, when given)."""
    messages = [{"role": "user", "content": prompt}]
    gateway = {"options": {"max_tokens": limit}} if limit else {}
    if surface == "gateway-chat":
        return "/gateway/chat/stream", {"model": model, "messages": messages, **gateway}
    if surface == "gateway-generate":
        return "/gateway/generate/stream", {"model": model, "prompt": prompt, **gateway}
    ollama = {"options": {"num_predict": limit}} if limit else {}
    if surface == "api-chat":
        return "/api/chat", {"model": model, "messages": messages, **ollama}
    if surface == "api-generate":
        return "/api/generate", {"model": model, "prompt": prompt, **ollama}
    if surface == RESPONSES:
        limited = {"max_output_tokens": limit} if limit else {}
        return "/v1/responses", {"model": model, "input": prompt, "stream": True, **limited}
    if surface == "v1-messages":
        return "/v1/messages", {"model": model, "stream": True, "messages": messages,
                                "max_tokens": limit or 4096}  # fmt: skip
    body: dict[str, Any] = {
        "model": model,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if limit:
        body["max_tokens"] = limit
    if surface == "v1-chat":
        return "/v1/chat/completions", {**body, "messages": messages}
    return "/v1/completions", {**body, "prompt": prompt}


async def stream(
    client: httpx.AsyncClient,
    surface: str,
    model: str,
    prompt: str,
    limit: int | None = None,
    body: dict[str, Any] | None = None,
) -> Streamed:
    """Run one stream to its end (`body` replaces the request's body when given)."""
    path, default = request(surface, model, prompt, limit)
    async with client.stream("POST", path, json=body or default) as reply:
        raw = (await reply.aread()).decode()
    got = Streamed(surface, prompt, reply.status_code)
    if reply.status_code != 200:
        got.final = {"status": reply.status_code, "body": raw}
        return got
    if surface.startswith("gateway"):
        for event, data in sse_events(raw):
            if event == "chunk":
                got.pieces.append(json.loads(data)["content"])
            elif event in ("result", "error"):
                got.final, got.ok = json.loads(data), event == "result"
    elif surface == "v1-messages":
        for event, data in sse_events(raw):
            obj = json.loads(data)
            if event == "content_block_delta" and obj["delta"]["type"] == "text_delta":
                got.pieces.append(obj["delta"]["text"])
            elif event == "message_delta":
                got.final = obj
            elif event == "message_stop":
                got.ok = True
            elif event == "error":
                got.final = obj
    elif surface.startswith("api"):
        for line in filter(None, raw.splitlines()):
            obj = json.loads(line)
            if "error" in obj:
                got.final = obj
            elif obj.get("done"):
                got.final, got.ok = obj, True
            else:
                got.pieces.append(
                    obj["response"] if "response" in obj else obj["message"]["content"]
                )
    elif surface == RESPONSES:
        for event, data in sse_events(raw):
            obj = json.loads(data)
            if event == "response.output_text.delta":
                got.pieces.append(obj["delta"])
            elif event in ("response.completed", "response.incomplete", "response.failed"):
                got.final, got.ok = obj["response"], event == "response.completed"
    else:
        for _, data in sse_events(raw):
            if data == "[DONE]":
                got.ok = True
                continue
            obj = json.loads(data)
            if "error" in obj:
                got.final = obj
                continue
            for choice in obj.get("choices") or []:
                piece = choice.get("text") if "text" in choice else choice["delta"].get("content")
                if piece:
                    got.pieces.append(piece)
            got.final = obj if obj.get("usage") else got.final
    return got


async def stored_runs(client: httpx.AsyncClient, since: str | None = None) -> list[dict[str, Any]]:
    """Every stored result (created at or after `since`), newest first."""
    params: dict[str, Any] = {"limit": 500}
    if since is not None:
        params["since"] = since
    reply = await client.get("/gateway/results", params=params)
    reply.raise_for_status()
    return list(reply.json()["items"])
