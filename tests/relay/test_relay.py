"""The relay on its own: raw requests through the core's pool (the `/api` surface's tests,
tests/api/ollama, take it through the gateway)."""

from __future__ import annotations

from app.ollama import OllamaManager
from app.relay.relay import Relay


async def test_the_relay_forwards_to_the_backend(manager: OllamaManager) -> None:
    relay = Relay(manager.executor, forget_inventory=manager.mark_inventory_stale)
    reply = await relay.arelay("GET", "/api/tags")
    body = b"".join([piece async for piece in reply.body])
    assert reply.status == 200 and b"llama3.1:8b" in body
    await manager.aclose()
