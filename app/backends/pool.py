"""`BackendPool`: the seam between the core and the set of configured Ollama servers.

Today it routes simply: a backend that already has the model, else the first one that
answers. Health checks, circuit breaking, least-loaded routing and failover grow here
later without the core changing, because the core only asks `pick(model)` and `clients`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from app.backends.client import OllamaClient
from app.backends.errors import BackendError, BackendUnavailable

__all__ = ["BackendPool"]


class BackendPool:
    """The configured Ollama servers, one `OllamaClient` each."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        timeout: float = 300.0,
        connect_timeout: float = 5.0,
        health_timeout: float = 2.0,
    ) -> None:
        if not urls:
            raise ValueError("BackendPool needs at least one backend URL")
        self.health_timeout = health_timeout
        self._clients = [
            OllamaClient(url, timeout=timeout, connect_timeout=connect_timeout) for url in urls
        ]

    @property
    def clients(self) -> list[OllamaClient]:
        return list(self._clients)

    @property
    def urls(self) -> list[str]:
        return [client.base_url for client in self._clients]

    def __repr__(self) -> str:
        return f"BackendPool({self.urls!r})"

    async def pick(
        self, model: str | None = None, *, has_model: Callable[[str, str], bool] | None = None
    ) -> OllamaClient:
        """The backend a request for `model` should go to.

        With a single backend there is nothing to choose and no probe is made: the request
        itself reports an unreachable server. With several, each is asked for its tags
        (within `health_timeout`); the first that lists the model wins, else the first that
        answered. `has_model(installed_name, wanted)` decides name equality (the core's
        normalisation), defaulting to plain equality.
        """
        if len(self._clients) == 1:
            return self._clients[0]
        same = has_model or (lambda installed, wanted: installed == wanted)
        answers = await asyncio.gather(
            *(client.tags(timeout=self.health_timeout) for client in self._clients),
            return_exceptions=True,
        )
        healthy: list[OllamaClient] = []
        errors: list[str] = []
        for client, answer in zip(self._clients, answers, strict=True):
            if isinstance(answer, BackendError):
                errors.append(f"{client.base_url}: {answer}")
                continue
            if isinstance(answer, BaseException):
                raise answer
            healthy.append(client)
            if model is not None and any(same(str(m.get("name", "")), model) for m in answer):
                return client
        if healthy:
            return healthy[0]
        raise BackendUnavailable("no backend is reachable: " + "; ".join(errors))

    async def aclose(self) -> None:
        """Close every backend's pooled connections."""
        for client in self._clients:
            await client.aclose()
