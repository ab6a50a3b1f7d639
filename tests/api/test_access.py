"""API keys, scopes, model allowlists, rate limits and the audit log, on all three surfaces
(`/gateway`, Ollama's `/api`, OpenAI's `/v1`), through a gateway under uvicorn."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from app.main import create_app
from app.settings import Settings
from tests.api.conftest import gateway_settings, sse_events
from tests.support.databases import fresh_pg_database
from tests.support.servers import free_port, running_process, serving_in_thread

RUN = {"model": "llama3.1:8b", "prompt": "hello", "options": {"max_tokens": 4}}
CHAT = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}]}


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def create_key(gateway: str, admin_key: str, **body: Any) -> str:
    reply = httpx.post(f"{gateway}/gateway/keys", json=body, headers=bearer(admin_key), timeout=10)
    assert reply.status_code == 201, reply.text
    key: str = reply.json()["key"]
    return key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keyed(emulator_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A gateway with one admin key (made with the command line); yields (url, admin key)."""
    settings = gateway_settings([emulator_url], tmp_path, key_cache_seconds=0)
    created = cli(
        "keys", "create", "--scope", "admin", "--name", "root",
        env={"GATEWAY_DATABASE_URL": settings.database_url},
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    admin_key = created.stdout.split()[-1]
    assert admin_key.startswith("ogw_") and "cannot be shown again" in created.stdout
    with serving_in_thread(create_app(settings)) as url:
        yield url, admin_key


def test_without_keys_on_loopback_everything_is_anonymous(
    emulator_url: str, tmp_path: Path
) -> None:
    with serving_in_thread(create_app(gateway_settings([emulator_url], tmp_path))) as url:
        assert httpx.post(f"{url}/gateway/generate", json=RUN, timeout=10).status_code == 200
        # a bearer token (OpenAI's SDK always sends one) is ignored while no key exists
        reply = httpx.get(f"{url}/gateway/config", headers=bearer("anything"), timeout=10)
        assert reply.status_code == 200


def test_require_auth_demands_keys_even_on_loopback(emulator_url: str, tmp_path: Path) -> None:
    settings = gateway_settings([emulator_url], tmp_path, require_auth=True)
    with serving_in_thread(create_app(settings)) as url:
        reply = httpx.post(f"{url}/gateway/generate", json=RUN, timeout=10)
        assert reply.status_code == 401 and reply.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_serve_refuses_an_open_address_without_keys(tmp_path: Path) -> None:
    env = {
        "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/open.db",
        "GATEWAY_BACKENDS": f"http://127.0.0.1:{free_port()}",
    }
    refused = cli("serve", "--host", "0.0.0.0", "--port", str(free_port()), env=env)
    assert refused.returncode == 2
    assert "refusing to serve on 0.0.0.0 without API keys" in refused.stderr
    # the app itself refuses too, whoever runs it
    settings = gateway_settings(
        [env["GATEWAY_BACKENDS"]],
        tmp_path,
        host="0.0.0.0",
        database_url=env["GATEWAY_DATABASE_URL"],
    )
    with pytest.raises(RuntimeError), serving_in_thread(create_app(settings)):
        pass
    # with a key it starts (served here on loopback, configured as if it were open)
    assert cli("keys", "create", "--name", "ops", "--scope", "admin", env=env).returncode == 0
    with serving_in_thread(create_app(settings)) as url:
        assert httpx.get(f"{url}/gateway/models", timeout=10).status_code == 401


def test_401_on_every_surface(keyed: tuple[str, str]) -> None:
    url, _ = keyed
    for headers in ({}, bearer("ogw_not-a-key"), {"Authorization": "Basic abc"}):
        reply = httpx.post(f"{url}/gateway/generate", json=RUN, headers=headers, timeout=10)
        assert reply.status_code == 401, headers
        assert reply.headers["content-type"] == "application/problem+json"
        assert reply.json()["title"] == "Unauthorized"
    with pytest.raises(ollama.ResponseError) as raised:
        ollama.Client(host=url).chat(**CHAT)
    assert raised.value.status_code == 401 and "API key" in raised.value.error
    with pytest.raises(ollama.ResponseError) as raised:
        ollama.Client(host=url, headers=bearer("ogw_wrong")).list()
    assert raised.value.status_code == 401
    with pytest.raises(openai.AuthenticationError) as denied:
        openai.OpenAI(base_url=f"{url}/v1", api_key="ogw_wrong", max_retries=0).models.list()
    assert denied.value.status_code == 401
    body = denied.value.body
    assert isinstance(body, dict) and body["type"] == "authentication_error"
    # probes stay open
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    assert httpx.get(f"{url}/", timeout=10).text == "Ollama is running"


def test_403_for_scope_and_for_models_outside_the_allowlist(keyed: tuple[str, str]) -> None:
    url, admin = keyed
    user = create_key(url, admin, name="llama-only", scope="user", models=["llama3*"])
    # the scope: a user key cannot pull, delete, change config or make keys
    for method, path, body in (
        ("POST", "/gateway/pulls", {"model": "phi3:mini"}),
        ("DELETE", "/gateway/models/llama3.1:8b", None),
        ("PATCH", "/gateway/config", {"default_model": "x"}),
        ("GET", "/gateway/keys", None),
        ("GET", "/gateway/audit", None),
        ("GET", "/gateway/backends", None),
    ):
        reply = httpx.request(method, url + path, json=body, headers=bearer(user), timeout=10)
        assert reply.status_code == 403, (method, path, reply.text)
        assert "admin key" in reply.json()["detail"]
    client = ollama.Client(host=url, headers=bearer(user))
    with pytest.raises(ollama.ResponseError) as raised:
        client.pull("phi3:mini")
    assert raised.value.status_code == 403
    with pytest.raises(ollama.ResponseError):
        client.delete("llama3.1:8b")

    # the allowlist: llama3* runs, qwen2.5:0.5b does not, on every surface
    ok = httpx.post(f"{url}/gateway/generate", json=RUN, headers=bearer(user), timeout=10)
    assert ok.status_code == 200
    qwen = {**RUN, "model": "qwen2.5:0.5b"}
    denied = httpx.post(f"{url}/gateway/generate", json=qwen, headers=bearer(user), timeout=10)
    assert denied.status_code == 403 and "qwen2.5:0.5b" in denied.json()["detail"]
    compare = {"models": ["llama3.1:8b", "qwen2.5:0.5b"], "prompt": "x"}
    reply = httpx.post(f"{url}/gateway/comparisons", json=compare, headers=bearer(user))
    assert reply.status_code == 403
    assert client.generate(model="llama3.1:8b", prompt="hi").response
    with pytest.raises(ollama.ResponseError) as raised:
        client.generate(model="qwen2.5:0.5b", prompt="hi")
    assert raised.value.status_code == 403 and "qwen2.5:0.5b" in raised.value.error
    assert {m.model for m in client.list().models} == {"llama3.1:8b"}
    v1 = openai.OpenAI(base_url=f"{url}/v1", api_key=user, max_retries=0)
    assert v1.chat.completions.create(model="llama3.1:8b", messages=CHAT["messages"]).choices
    with pytest.raises(openai.PermissionDeniedError):
        v1.chat.completions.create(model="qwen2.5:0.5b", messages=CHAT["messages"])
    with pytest.raises(openai.PermissionDeniedError):
        v1.embeddings.create(model="nomic-embed-text", input="x")
    assert [m.id for m in v1.models.list()] == ["llama3.1:8b"]


def test_429_with_retry_after_on_every_surface(keyed: tuple[str, str]) -> None:
    url, admin = keyed
    calls = {
        "gateway": lambda key: httpx.post(
            f"{url}/gateway/generate", json=RUN, headers=bearer(key), timeout=10
        ),
        "ollama": lambda key: httpx.post(
            f"{url}/api/generate", json={**RUN, "stream": False}, headers=bearer(key), timeout=10
        ),
        "openai": lambda key: httpx.post(
            f"{url}/v1/chat/completions", json=CHAT, headers=bearer(key), timeout=10
        ),
    }
    for surface, call in calls.items():
        key = create_key(url, admin, name=f"rpm-{surface}", requests_per_minute=2)
        assert [call(key).status_code for _ in range(2)] == [200, 200], surface
        limited = call(key)
        assert limited.status_code == 429, surface
        assert 1 <= int(limited.headers["retry-after"]) <= 30
        assert "2 requests per minute" in limited.text
    openai_key = create_key(url, admin, name="rpm-sdk", requests_per_minute=1)
    v1 = openai.OpenAI(base_url=f"{url}/v1", api_key=openai_key, max_retries=0)
    v1.models.list()
    with pytest.raises(openai.RateLimitError):
        v1.models.list()


def test_a_token_limit_counts_what_runs_used(keyed: tuple[str, str]) -> None:
    url, admin = keyed
    key = create_key(url, admin, name="tpm", tokens_per_minute=20)
    big = {**RUN, "options": {"max_tokens": 30}}
    first = httpx.post(f"{url}/gateway/generate", json=big, headers=bearer(key), timeout=10)
    assert first.status_code == 200 and first.json()["tokens_used"] == 30
    second = httpx.post(f"{url}/gateway/generate", json=RUN, headers=bearer(key), timeout=10)
    assert second.status_code == 429 and "tokens per minute" in second.json()["detail"]


def test_keys_are_shown_once_listed_without_secrets_and_revoked(keyed: tuple[str, str]) -> None:
    url, admin = keyed
    reply = httpx.post(
        f"{url}/gateway/keys", json={"name": "temp", "scope": "user"}, headers=bearer(admin)
    )
    created = reply.json()
    key = created["key"]
    assert created["prefix"] == key[:12]
    listed = httpx.get(f"{url}/gateway/keys", headers=bearer(admin)).json()
    assert {k["name"] for k in listed} == {"root", "temp"}
    assert key not in reply.request.url.path and all("key" not in k for k in listed)
    duplicate = httpx.post(f"{url}/gateway/keys", json={"name": "temp"}, headers=bearer(admin))
    assert duplicate.status_code == 409
    bad = httpx.post(f"{url}/gateway/keys", json={"name": "a b", "scope": "root"},
                     headers=bearer(admin))  # fmt: skip
    assert bad.status_code == 422 and {e["loc"][-1] for e in bad.json()["errors"]} == {
        "name",
        "scope",
    }
    assert httpx.get(f"{url}/gateway/models", headers=bearer(key)).status_code == 200
    assert httpx.delete(f"{url}/gateway/keys/temp", headers=bearer(admin)).status_code == 204
    assert httpx.get(f"{url}/gateway/models", headers=bearer(key)).status_code == 401
    assert httpx.delete(f"{url}/gateway/keys/temp", headers=bearer(admin)).status_code == 404


def test_the_command_line_lists_and_revokes(tmp_path: Path) -> None:
    env = {"GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/keys.db"}
    made = cli("keys", "create", "--name", "ci", "--models", "llama3*,qwen*", "--rpm", "5",
               env=env)  # fmt: skip
    assert made.returncode == 0 and made.stdout.split()[-1].startswith("ogw_")
    listed = cli("keys", "list", env=env).stdout
    assert "ci" in listed and "llama3*,qwen*" in listed and made.stdout.split()[-1] not in listed
    bad = cli("keys", "create", "--name", "x", "--scope", "root", env=env)
    assert bad.returncode == 2 and "scope must be one of" in bad.stderr
    assert cli("keys", "revoke", "ci", env=env).returncode == 0
    assert "ci" not in cli("keys", "list", env=env).stdout
    assert cli("keys", "revoke", "ci", env=env).returncode == 1


def test_user_keys_read_only_their_own_results(keyed: tuple[str, str]) -> None:
    url, admin = keyed
    alice, bob = (create_key(url, admin, name=n) for n in ("alice", "bob"))
    mine = httpx.post(f"{url}/gateway/generate", json=RUN, headers=bearer(alice)).json()["id"]
    httpx.post(f"{url}/gateway/generate", json=RUN, headers=bearer(bob))
    ollama.Client(host=url, headers=bearer(alice)).generate(model="llama3.1:8b", prompt="via api")
    seen = httpx.get(f"{url}/gateway/results", headers=bearer(alice)).json()["items"]
    assert {r["principal"] for r in seen} == {"alice"} and len(seen) == 2
    assert httpx.get(f"{url}/gateway/results/{mine}", headers=bearer(bob)).status_code == 404
    assert httpx.delete(f"{url}/gateway/results/{mine}", headers=bearer(bob)).status_code == 404
    assert httpx.get(f"{url}/gateway/results/{mine}", headers=bearer(alice)).status_code == 200
    everything = httpx.get(f"{url}/gateway/results", headers=bearer(admin)).json()["items"]
    assert {r["principal"] for r in everything} == {"alice", "bob"}


def test_a_streamed_comparison_is_its_callers_and_keeps_to_its_model_allowlist(
    keyed: tuple[str, str],
) -> None:
    url, admin = keyed
    alice = create_key(url, admin, name="alice", models=["llama3*", "qwen*"])
    bob = create_key(url, admin, name="bob", models=["llama3*"])
    body = {"models": ["llama3.1:8b", "qwen2.5:0.5b"], "prompt": "hi"}
    stream = f"{url}/gateway/comparisons/stream"
    reply = httpx.post(stream, json=body, headers=bearer(alice), timeout=30)
    assert reply.status_code == 200, reply.text
    (report,) = [json.loads(d) for name, d in sse_events(reply.text) if name == "comparison"]
    mine = f"{url}/gateway/comparisons/{report['id']}"
    stored = httpx.get(mine, headers=bearer(alice), timeout=10)
    assert stored.status_code == 200 and stored.json()["principal"] == "alice"
    assert {r["principal"] for r in stored.json()["runs"]} == {"alice"}
    assert httpx.get(mine, headers=bearer(bob), timeout=10).status_code == 404
    assert httpx.get(mine, headers=bearer(admin), timeout=10).status_code == 200
    refused = httpx.post(stream, json=body, headers=bearer(bob), timeout=10)
    assert refused.status_code == 403 and "qwen2.5:0.5b" in refused.json()["detail"]


def test_the_audit_log_has_allowed_and_denied_calls_but_no_prompts(
    keyed: tuple[str, str],
) -> None:
    url, admin = keyed
    user = create_key(url, admin, name="auditee", models=["llama3*"])
    secret_prompt = "my secret prompt 7731"
    httpx.post(f"{url}/gateway/generate", json={**RUN, "prompt": secret_prompt},
               headers=bearer(user))  # fmt: skip
    httpx.post(f"{url}/api/generate", json={**RUN, "model": "qwen2.5:0.5b", "stream": False},
               headers=bearer(user))  # fmt: skip
    httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers=bearer("ogw_forged"))
    entries = httpx.get(f"{url}/gateway/audit", headers=bearer(admin)).json()["items"]
    assert secret_prompt not in str(entries)
    by_action = {(e["actor"], e["action"]): e for e in entries}
    allowed = by_action[("auditee", "POST /gateway/generate")]
    assert allowed["outcome"] == "allowed" and allowed["status"] == 200
    assert allowed["target"] == "llama3.1:8b" and allowed["surface"] == "gateway"
    assert allowed["client"] == "127.0.0.1" and allowed["duration_ms"] > 0
    denied = by_action[("auditee", "POST /api/generate")]
    assert denied["outcome"] == "denied" and denied["status"] == 403
    assert denied["target"] == "qwen2.5:0.5b" and denied["surface"] == "ollama"
    forged = by_action[("invalid-key", "POST /v1/chat/completions")]
    assert forged["outcome"] == "denied" and forged["status"] == 401
    filtered = httpx.get(
        f"{url}/gateway/audit", params={"outcome": "denied", "surface": "ollama"},
        headers=bearer(admin),
    ).json()["items"]  # fmt: skip
    assert [e["action"] for e in filtered] == ["POST /api/generate"]


def test_two_gateways_sharing_postgresql_and_redis_enforce_one_limit(
    emulator_url: str,
) -> None:
    with fresh_pg_database() as database_url:
        env = {
            "GATEWAY_BACKENDS": emulator_url,
            "GATEWAY_DATABASE_URL": database_url,
            "GATEWAY_REDIS_URL": "redis://127.0.0.1:6379/0",
            "GATEWAY_LOG_LEVEL": "warning",
        }
        assert cli("migrate", env=env).returncode == 0
        made = cli("keys", "create", "--name", "shared", "--rpm", "4", env=env)
        key = made.stdout.split()[-1]
        urls = []
        with contextlib.ExitStack() as stack:
            for _ in range(2):
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                args = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
                stack.enter_context(running_process(args, url + "/healthz", env=env))
                urls.append(url)
            codes = [
                httpx.post(f"{urls[i % 2]}/gateway/generate", json=RUN, headers=bearer(key),
                           timeout=10).status_code
                for i in range(6)
            ]  # fmt: skip
        assert codes == [200, 200, 200, 200, 429, 429]


def test_settings_name_the_secure_defaults() -> None:
    settings = Settings(_env_file=None)
    assert settings.require_auth is False and settings.allow_anonymous is False
    assert settings.redis_url is None


def test_a_redis_outage_lets_requests_through(emulator_url: str, tmp_path: Path) -> None:
    settings = gateway_settings(
        [emulator_url], tmp_path, redis_url=f"redis://127.0.0.1:{free_port()}/0",
        key_cache_seconds=0,
    )  # fmt: skip
    env = {"GATEWAY_DATABASE_URL": settings.database_url}
    key = cli("keys", "create", "--name", "limited", "--rpm", "1", env=env).stdout.split()[-1]
    with serving_in_thread(create_app(settings)) as url:
        codes = [
            httpx.post(f"{url}/gateway/generate", json=RUN, headers=bearer(key)).status_code
            for _ in range(3)
        ]
    assert codes == [200, 200, 200]
