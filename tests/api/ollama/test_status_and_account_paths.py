"""Ollama's newer `/api` paths through the gateway: status and model recommendations relayed
for any key, the web tools only when an admin turns them on (and never with the client's
credentials), the backend's account operations refused and never relayed. What reached the
backend is read from the emulator's log of received requests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.main import create_app
from tests.api.conftest import gateway_settings
from tests.support.servers import serving_in_thread

ADMIN_KEY = "ogw_" + "status-tests-admin-key-012345678"
ACCOUNT = [("POST", "/api/me"), ("POST", "/api/signout"), ("DELETE", "/api/user/keys/c3NoLWtleQ")]
WEB_TOOLS = [
    ("/api/experimental/web_search", {"query": "ollama gateway", "max_results": 2}),
    ("/api/experimental/web_fetch", {"url": "https://ollama.com"}),
]


def received(emulator: str) -> list[dict[str, Any]]:
    state = httpx.get(f"{emulator}/_emulator/state", timeout=5).json()
    log: list[dict[str, Any]] = state["received"]
    return log


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def keyed_gateway(emulator: str, tmp_path: Path, **settings: Any) -> Iterator[tuple[str, str]]:
    """A gateway with keys (an admin's and a user's allowed one model); yields (url, user key)."""
    config = gateway_settings([emulator], tmp_path, admin_key=ADMIN_KEY, key_cache_seconds=0,
                              **settings)  # fmt: skip
    with serving_in_thread(create_app(config)) as url:
        reply = httpx.post(
            f"{url}/gateway/keys",
            json={"name": "someone", "scope": "user", "models": ["qwen2.5:0.5b"]},
            headers=bearer(ADMIN_KEY),
            timeout=10,
        )
        assert reply.status_code == 201, reply.text
        yield url, reply.json()["key"]


@pytest.fixture
def gateway(emulator_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    yield from keyed_gateway(emulator_url, tmp_path)


@pytest.fixture
def web_gateway(emulator_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    yield from keyed_gateway(emulator_url, tmp_path, relay_web_tools=True)


def test_status_and_recommendations_are_relayed_for_any_key(
    gateway: tuple[str, str], emulator_url: str
) -> None:
    url, user = gateway
    status = httpx.get(f"{url}/api/status", headers=bearer(user), timeout=10)
    assert status.status_code == 200
    body = status.json()
    assert set(body) == {"cloud"} and set(body["cloud"]) == {"disabled", "source"}
    assert isinstance(body["cloud"]["disabled"], bool) and isinstance(body["cloud"]["source"], str)
    assert body == httpx.get(f"{emulator_url}/api/status", timeout=5).json()
    recommended = httpx.get(
        f"{url}/api/experimental/model-recommendations", headers=bearer(user), timeout=10
    )
    assert recommended.status_code == 200
    models = [r["model"] for r in recommended.json()["recommendations"]]
    assert models and all(isinstance(m, str) for m in models)
    assert httpx.get(f"{url}/api/status", timeout=10).status_code == 401  # a key is still needed
    wrong_method = httpx.post(f"{url}/api/status", headers=bearer(user), timeout=10)
    assert (wrong_method.status_code, wrong_method.text) == (405, "405 method not allowed")


def test_account_operations_are_403_for_every_key_and_never_reach_a_backend(
    gateway: tuple[str, str], emulator_url: str
) -> None:
    url, user = gateway
    for key in (ADMIN_KEY, user):
        for method, path in ACCOUNT:
            reply = httpx.request(method, f"{url}{path}", headers=bearer(key), json={}, timeout=10)
            assert reply.status_code == 403, (method, path, reply.text)
            assert "not relay" in reply.json()["error"]
    assert httpx.get(f"{url}/api/me", headers=bearer(ADMIN_KEY), timeout=10).status_code == 405
    assert httpx.post(f"{url}/api/me", timeout=10).status_code == 401
    # the log works (the status went through), and holds none of the account paths
    assert httpx.get(f"{url}/api/status", headers=bearer(user), timeout=10).status_code == 200
    paths = [r["path"] for r in received(emulator_url)]
    assert "/api/status" in paths
    assert not [p for p in paths if p in ("/api/me", "/api/signout") or p.startswith("/api/user")]


def test_web_tools_are_refused_while_the_setting_is_off(
    gateway: tuple[str, str], emulator_url: str
) -> None:
    url, user = gateway
    for key in (ADMIN_KEY, user):
        for path, body in WEB_TOOLS:
            reply = httpx.post(f"{url}{path}", json=body, headers=bearer(key), timeout=10)
            assert reply.status_code == 403
            assert "GATEWAY_RELAY_WEB_TOOLS" in reply.json()["error"]
    assert not [r for r in received(emulator_url) if "experimental/web" in r["path"]]


def test_web_tools_when_on_reach_the_backend_without_the_clients_authorization(
    web_gateway: tuple[str, str], emulator_url: str
) -> None:
    url, user = web_gateway
    headers = {**bearer(user), "Cookie": "session=secret", "X-Api-Key": "sk-provider-secret"}
    search = httpx.post(f"{url}{WEB_TOOLS[0][0]}", json=WEB_TOOLS[0][1], headers=headers)
    assert search.status_code == 200, search.text
    results = search.json()["results"]
    assert len(results) == 2 and all("ollama gateway" in r["title"] for r in results)
    fetched = httpx.post(f"{url}{WEB_TOOLS[1][0]}", json=WEB_TOOLS[1][1], headers=headers)
    assert fetched.status_code == 200 and fetched.json()["title"]
    sent = [r for r in received(emulator_url) if "experimental/web" in r["path"]]
    assert [r["path"] for r in sent] == [path for path, _ in WEB_TOOLS]
    for request in sent:
        assert "authorization" not in request["headers"]
        assert not {"cookie", "x-api-key"} & set(request["headers"])
        assert "content-type" in request["headers"]
    empty = httpx.post(f"{url}{WEB_TOOLS[0][0]}", headers=bearer(user), timeout=10)
    assert (empty.status_code, empty.json()) == (400, {"error": "missing request body"})
