"""/gateway/models: list, get, delete, stats."""

from __future__ import annotations

import httpx

PROBLEM = "application/problem+json"


async def test_lists_the_backends_models(client: httpx.AsyncClient, emulator_url: str) -> None:
    r = await client.get("/gateway/models")
    assert r.status_code == 200
    names = {m["name"] for m in r.json()}
    assert {"llama3.1:8b", "qwen2.5:0.5b", "nomic-embed-text:latest"} <= names
    llama = next(m for m in r.json() if m["name"] == "llama3.1:8b")
    assert llama["family"] == "llama" and llama["format"] == "gguf"
    assert llama["backends"] == [emulator_url.removeprefix("http://")]
    assert len(llama["id"]) == 12 and llama["size"] > 0


async def test_refresh_sees_a_model_removed_behind_the_gateways_back(
    client: httpx.AsyncClient, emulator_url: str
) -> None:
    assert any(m["name"] == "qwen2.5:0.5b" for m in (await client.get("/gateway/models")).json())
    async with httpx.AsyncClient() as ollama:
        await ollama.request("DELETE", f"{emulator_url}/api/delete", json={"model": "qwen2.5:0.5b"})
    r = await client.get("/gateway/models", params={"refresh": "true"})
    assert all(m["name"] != "qwen2.5:0.5b" for m in r.json())


async def test_gets_a_model_by_a_name_with_colon_and_slash(client: httpx.AsyncClient) -> None:
    r = await client.get("/gateway/models/library/llama3.1:8b")
    assert r.status_code == 200
    assert r.json()["name"] == "llama3.1:8b"
    r = await client.get("/gateway/models/nomic-embed-text")
    assert r.status_code == 200, "a name without tag means :latest"


async def test_an_unknown_model_is_a_404_problem(client: httpx.AsyncClient) -> None:
    r = await client.get("/gateway/models/no-such-model:1b")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith(PROBLEM)
    assert r.json()["status"] == 404 and "no-such-model:1b" in r.json()["detail"]


async def test_deletes_a_model(client: httpx.AsyncClient) -> None:
    r = await client.delete("/gateway/models/qwen2.5:0.5b")
    assert r.status_code == 204
    assert (await client.get("/gateway/models/qwen2.5:0.5b")).status_code == 404
    assert (await client.delete("/gateway/models/qwen2.5:0.5b")).status_code == 404


async def test_stats_count_and_size_the_models(client: httpx.AsyncClient) -> None:
    r = await client.get("/gateway/models/stats")
    assert r.status_code == 200
    stats = r.json()
    models = (await client.get("/gateway/models")).json()
    assert stats["total_models"] == len(models)
    assert stats["total_size"] == sum(m["size"] for m in models)
    assert stats["families"]["llama"] >= 1


async def test_a_backend_that_is_down_is_a_503_with_retry_after(
    down_client: httpx.AsyncClient,
) -> None:
    r = await down_client.get("/gateway/models")
    assert r.status_code == 503
    assert r.headers["retry-after"]
    assert r.headers["content-type"].startswith(PROBLEM)


async def test_lists_backends_with_health(client: httpx.AsyncClient, emulator_url: str) -> None:
    r = await client.get("/gateway/backends")
    assert r.status_code == 200
    [backend] = r.json()
    assert backend["url"] == emulator_url and backend["healthy"] is True
    assert backend["version"]
