"""The deployment's own admin key (GATEWAY_ADMIN_KEY or GATEWAY_ADMIN_KEY_FILE): stored at
start like any key, once however often and however many replicas start, so `serve` on an
open address is secure and up with no manual step. Real `serve` processes bound to 0.0.0.0
(probed on loopback), and the app under uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydantic
import pytest

from app.access import KeyStore
from app.main import create_app
from app.settings import Settings
from tests.api.conftest import gateway_settings
from tests.support.commands import run, serving, started
from tests.support.databases import fresh_pg_database
from tests.support.servers import free_port, serving_in_thread, wait_until_up

RUN = {"model": "llama3.1:8b", "prompt": "hello", "options": {"max_tokens": 4}}


def new_key() -> str:
    return "ogw_" + secrets.token_urlsafe(32)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def open_serve(port: int) -> list[str]:
    return ["ollama-gateway", "serve", "--host", "0.0.0.0", "--port", str(port)]


def stored_keys(url: str, key: str) -> list[dict[str, object]]:
    reply = httpx.get(f"{url}/gateway/keys", headers=bearer(key), timeout=10)
    assert reply.status_code == 200, reply.text
    items: list[dict[str, object]] = reply.json()
    return items


def test_the_admin_key_from_the_environment_opens_an_open_address_once(
    emulator_url: str, tmp_path: Path
) -> None:
    key = new_key()
    env = {
        "GATEWAY_ADMIN_KEY": key,
        "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/gateway.db",
        "GATEWAY_BACKENDS": emulator_url,
    }
    logs = []
    for start in range(2):  # a restart finds the key stored and stores nothing
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        logs.append(tmp_path / f"serve-{start}.log")
        with serving(open_serve(port), env, logs[-1], tmp_path, url):
            assert httpx.get(f"{url}/gateway/models", timeout=10).status_code == 401
            wrong = httpx.get(f"{url}/gateway/models", headers=bearer(new_key()), timeout=10)
            assert wrong.status_code == 401
            reply = httpx.post(f"{url}/gateway/generate", json=RUN, headers=bearer(key), timeout=10)
            assert reply.status_code == 200, reply.text
            keys = stored_keys(url, key)  # an admin route
            assert [(k["name"], k["scope"], k["revoked_at"]) for k in keys] == [
                ("bootstrap-admin", "admin", None)
            ]
    assert "stored the admin key" in logs[0].read_text()
    assert "stored the admin key" not in logs[1].read_text()
    for log in logs:
        assert key not in log.read_text()
    listed = run(["ollama-gateway", "keys", "list", "--all"], env, tmp_path)
    assert listed.returncode == 0 and listed.stdout.count("bootstrap-admin") == 1
    assert key not in listed.stdout


def test_the_admin_key_from_a_mounted_file(emulator_url: str, tmp_path: Path) -> None:
    key = new_key()
    secret = tmp_path / "admin-key"
    secret.write_text(f"  {key}\n\n")  # as `echo`, editors and Kubernetes leave it
    secret.chmod(0o400)
    env = {
        "GATEWAY_ADMIN_KEY_FILE": str(secret),
        "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/gateway.db",
        "GATEWAY_BACKENDS": emulator_url,
    }
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with serving(open_serve(port), env, log, tmp_path, url):
        assert httpx.get(f"{url}/gateway/config", timeout=10).status_code == 401
        assert (
            httpx.get(f"{url}/gateway/config", headers=bearer(key), timeout=10).status_code == 200
        )
    assert key not in log.read_text()


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"GATEWAY_ADMIN_KEY": "ogw_tooShort1234"}, "it must have at least 32"),
        ({"GATEWAY_ADMIN_KEY": "x" * 40}, "it must start with 'ogw_'"),
        ({"GATEWAY_ADMIN_KEY": "ogw_" + "a" * 30 + "+/="}, "only letters, digits"),
        (
            {"GATEWAY_ADMIN_KEY": new_key(), "GATEWAY_ADMIN_KEY_FILE": "/nonexistent"},
            "set GATEWAY_ADMIN_KEY or GATEWAY_ADMIN_KEY_FILE, not both",
        ),
        ({"GATEWAY_ADMIN_KEY_FILE": "/nonexistent/admin-key"}, "cannot read"),
    ],
)
def test_a_key_the_gateway_would_not_accept_is_refused_with_a_clear_error(
    env: dict[str, str], says: str, tmp_path: Path
) -> None:
    env = {
        **env,
        "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/gateway.db",
        "GATEWAY_BACKENDS": f"http://127.0.0.1:{free_port()}",
    }
    refused = run(open_serve(free_port()), env, tmp_path)
    assert refused.returncode == 2
    assert says in refused.stderr, refused.stderr
    assert refused.stderr.startswith("Error: ") and "Traceback" not in refused.stderr
    if "GATEWAY_ADMIN_KEY" in env and "+/=" not in env["GATEWAY_ADMIN_KEY"]:
        assert env["GATEWAY_ADMIN_KEY"] not in refused.stderr
    assert "make one with" in refused.stderr or "GATEWAY_ADMIN_KEY_FILE" in refused.stderr


def test_settings_never_show_the_key(tmp_path: Path) -> None:
    key = new_key()
    settings = Settings(_env_file=None, admin_key=key)
    assert key not in repr(settings) and key not in str(settings)
    assert key not in settings.model_dump_json()
    assert settings.admin_key is not None and settings.admin_key.get_secret_value() == key
    assert Settings(_env_file=None, admin_key="").admin_key is None  # `GATEWAY_ADMIN_KEY=`
    short = "ogw_" + "s3cret" * 3
    with pytest.raises(pydantic.ValidationError) as caught:
        Settings(_env_file=None, admin_key=short)
    assert short not in str(caught.value)


@contextlib.contextmanager
def database(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "postgresql":
        with fresh_pg_database() as url:
            yield url
    else:
        yield f"sqlite+aiosqlite:///{tmp_path}/gateway.db"


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_replicas_starting_at_once_store_one_key(kind: str, tmp_path: Path) -> None:
    """Several processes find no key and insert it at the same moment: the unique hash lets
    one in, the others find its row; nothing fails and nothing is stored twice."""
    key = new_key()
    with database(kind, tmp_path) as database_url:

        async def race() -> list[str]:
            stores = [KeyStore(database_url, cache_seconds=0) for _ in range(6)]
            try:
                for store in stores:  # connected and schema checked: they race on the key
                    await store.ahas_keys()
                return list(await asyncio.gather(*(s.aensure_bootstrap_key(key) for s in stores)))
            finally:
                for store in stores:
                    await store.aclose()

        outcomes = asyncio.run(race())
        assert sorted(outcomes) == ["created"] + ["exists"] * 5
        assert asyncio.run(race()) == ["exists"] * 6  # and again at the next start

        async def listed() -> list[dict[str, object]]:
            store = KeyStore(database_url)
            try:
                return await store.alist(include_revoked=True)
            finally:
                await store.aclose()

        keys = asyncio.run(listed())
        assert [(k["name"], k["scope"]) for k in keys] == [("bootstrap-admin", "admin")]


def test_replica_processes_starting_at_once_serve_with_one_key(
    emulator_url: str, tmp_path: Path
) -> None:
    key = new_key()
    with fresh_pg_database() as database_url:
        env = {
            "GATEWAY_ADMIN_KEY": key,
            "GATEWAY_DATABASE_URL": database_url,
            "GATEWAY_BACKENDS": emulator_url,
        }
        assert run(["ollama-gateway", "migrate"], env, tmp_path).returncode == 0
        ports = [free_port(), free_port()]
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        logs = [tmp_path / f"replica-{i}.log" for i in range(2)]
        with contextlib.ExitStack() as stack:
            # both started before either is waited for
            procs = [
                stack.enter_context(started(open_serve(port), env, log, tmp_path))
                for port, log in zip(ports, logs, strict=True)
            ]
            for url, proc, log in zip(urls, procs, logs, strict=True):
                try:
                    wait_until_up(f"{url}/healthz", proc, deadline_s=60)
                except RuntimeError as exc:
                    raise AssertionError(f"{exc}\n{log.read_text(errors='replace')}") from None
            for url in urls:
                assert httpx.get(f"{url}/gateway/models", timeout=10).status_code == 401
                keys = stored_keys(url, key)
                assert [(k["name"], k["scope"]) for k in keys] == [("bootstrap-admin", "admin")]
        for log in logs:
            assert key not in log.read_text()


def test_the_app_stores_the_key_itself_when_started_without_the_command_line(
    emulator_url: str, tmp_path: Path
) -> None:
    """Whoever runs the app (uvicorn with a factory, several workers) gets the key stored
    by its lifespan, before the check that refuses an open address without keys."""
    key = new_key()
    settings = gateway_settings([emulator_url], tmp_path, host="0.0.0.0", admin_key=key)
    with serving_in_thread(create_app(settings)) as url:  # served on loopback, set as if open
        assert httpx.get(f"{url}/gateway/models", timeout=10).status_code == 401
        assert (
            httpx.get(f"{url}/gateway/models", headers=bearer(key), timeout=10).status_code == 200
        )
    with serving_in_thread(create_app(settings)) as url:
        assert len(stored_keys(url, key)) == 1


def test_a_revoked_admin_key_stays_revoked_across_restarts(
    emulator_url: str, tmp_path: Path
) -> None:
    key = new_key()
    settings = gateway_settings(
        [emulator_url], tmp_path, require_auth=True, admin_key=key, key_cache_seconds=0
    )
    with serving_in_thread(create_app(settings)) as url:
        other = httpx.post(
            f"{url}/gateway/keys", json={"name": "ops", "scope": "admin"}, headers=bearer(key),
            timeout=10,
        ).json()["key"]  # fmt: skip
        revoked = httpx.delete(f"{url}/gateway/keys/bootstrap-admin", headers=bearer(other))
        assert revoked.status_code in (200, 204), revoked.text
    with serving_in_thread(create_app(settings)) as url:  # GATEWAY_ADMIN_KEY still set
        assert (
            httpx.get(f"{url}/gateway/models", headers=bearer(key), timeout=10).status_code == 401
        )
        assert (
            httpx.get(f"{url}/gateway/models", headers=bearer(other), timeout=10).status_code == 200
        )
