"""Ollama's status and experimental paths, answered deterministically with no ollama.com
behind them: `/api/status`, `/api/experimental/model-recommendations`, and the web tools
`/api/experimental/web_search` and `web_fetch` (made-up results naming what was asked)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from app.emulator.errors import OllamaError
from app.emulator.parsing import parse_body
from app.emulator.responses import Scope, Send, send_json
from app.emulator.state import State

__all__ = ["ExperimentalEndpoints"]

JSON = dict[str, Any]
DEFAULT_RESULTS = 5
MAX_RESULTS = 10


class ExperimentalEndpoints:
    def __init__(self, state: State) -> None:
        self.state = state

    async def status(self, scope: Scope, body: bytes, send: Send) -> None:
        """Cloud is on, decided by nothing (Ollama's `source` `none`)."""
        await send_json(send, {"cloud": {"disabled": False, "source": "none"}})

    async def model_recommendations(self, scope: Scope, body: bytes, send: Send) -> None:
        """The installed models that are not embedding models, as recommendations."""
        recommendations = [
            {
                "model": entry.display,
                "description": f"{entry.spec.family} {entry.spec.parameter_size}",
                "context_length": entry.spec.context_length,
            }
            for entry in self.state.installed.values()
            if not entry.spec.is_embedding
        ]
        await send_json(send, {"recommendations": recommendations})

    async def web_search(self, scope: Scope, body: bytes, send: Send) -> None:
        req = parse_body(body, "WebSearchRequest")
        query = req.get("query")
        if not isinstance(query, str) or not query.strip():
            raise OllamaError(400, "query is required")
        wanted = req.get("max_results")
        count = wanted if isinstance(wanted, int) and 0 < wanted <= MAX_RESULTS else DEFAULT_RESULTS
        results = [
            {
                "title": f"Result {i + 1} for {query}",
                "url": f"https://example.com/search/{i + 1}?q={quote(query)}",
                "content": f"What the web says about {query} (emulated result {i + 1}).",
            }
            for i in range(count)
        ]
        await send_json(send, {"results": results})

    async def web_fetch(self, scope: Scope, body: bytes, send: Send) -> None:
        req = parse_body(body, "WebFetchRequest")
        url = req.get("url")
        if not isinstance(url, str) or not url.strip():
            raise OllamaError(400, "url is required")
        await send_json(
            send,
            {
                "title": f"The page at {url}",
                "content": f"The emulated content of {url}.",
                "links": [f"{url.rstrip('/')}/about"],
            },
        )
