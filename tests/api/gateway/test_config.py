"""/gateway/config and /gateway/models/{name}/config."""

from __future__ import annotations

import httpx


async def test_get_patch_and_reset(client: httpx.AsyncClient, emulator_url: str) -> None:
    config = (await client.get("/gateway/config")).json()
    assert config["backends"] == [emulator_url]
    r = await client.patch("/gateway/config", json={"default_model": "qwen2.5:0.5b", "timeout": 60})
    assert r.status_code == 200 and r.json()["default_model"] == "qwen2.5:0.5b"
    assert (await client.get("/gateway/config")).json()["timeout"] == 60
    reset = (await client.post("/gateway/config/reset")).json()
    assert reset["default_model"] == config["default_model"]


async def test_invalid_patches_are_422_and_change_nothing(client: httpx.AsyncClient) -> None:
    before = (await client.get("/gateway/config")).json()
    for body in ({"timeout": 0}, {"bogus": 1}, {"backends": []}, {"auto_start_server": "yes"}):
        r = await client.patch("/gateway/config", json=body)
        assert r.status_code == 422, body
        assert r.json()["errors"]
    assert (await client.get("/gateway/config")).json() == before


async def test_validate_reports_an_uninstalled_default_model(client: httpx.AsyncClient) -> None:
    await client.patch("/gateway/config", json={"default_model": "llama3.1:8b"})
    assert (await client.get("/gateway/config/validate")).json()["valid"] is True
    await client.patch("/gateway/config", json={"default_model": "absent:1b"})
    report = (await client.get("/gateway/config/validate")).json()
    assert report["valid"] is False and "absent:1b" in report["errors"][0]


async def test_export_is_a_download_that_import_takes_back(client: httpx.AsyncClient) -> None:
    await client.patch("/gateway/config", json={"default_model": "mistral:7b"})
    await client.put("/gateway/models/mistral:7b/config", json={"temperature": 0.3})
    exported = await client.get("/gateway/config/export")
    assert "attachment" in exported.headers["content-disposition"]
    await client.post("/gateway/config/reset")
    r = await client.post("/gateway/config/import", json=exported.json())
    assert r.status_code == 200 and r.json()["default_model"] == "mistral:7b"
    bad = await client.post("/gateway/config/import", json={"config": {"timeout": "x"}})
    assert bad.status_code == 422
    path = await client.post("/gateway/config/import", json={"path": "/etc/passwd"})
    assert path.status_code == 422


async def test_presets(client: httpx.AsyncClient) -> None:
    presets = (await client.get("/gateway/config/presets")).json()
    assert set(presets) == {"fast", "creative", "balanced", "precise", "long_form"}
    assert presets["creative"]["temperature"] == 0.9 and presets["creative"]["max_tokens"] == 1024


async def test_model_configs_by_name(client: httpx.AsyncClient) -> None:
    assert (await client.get("/gateway/models/llama3.1/config")).status_code == 404
    r = await client.put("/gateway/models/llama3.1/config", json={"temperature": 0.2})
    assert r.status_code == 200
    got = await client.get("/gateway/models/llama3.1:latest/config")
    assert got.json() == {"temperature": 0.2}
    assert (await client.put("/gateway/models/x/config", json=[1])).status_code == 422
